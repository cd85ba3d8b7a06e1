"""Celery workers of the NVC service: tasks `compress` and `decompress` around `codec`."""
