"""The NVC HTTP API (FastAPI): jobs around the codec, state in Redis, files in object storage."""
