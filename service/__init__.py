"""The service core: what the API (`app/`) and the workers (`worker/`) share.

Job records (`service.jobs`), object storage (`service.storage`), settings
(`service.settings`), the queues and the Celery publisher (`service.queue`), the upload
check (`service.validate`), the submission domain (`service.submission`), the slices of a
finished job (`service.slices`, for the API's slice routes), and the problem data and error
texts both sides report (`service.problems`, `service.errors`).

Why a package of its own: the API and the workers depend down on this core and never on each
other, and nothing here imports FastAPI or Starlette, so a worker never loads the web stack
and the API does not load torch at start-up, only when a slice is first asked for
(docs/decisions/0005-slices-decoded-by-the-api.md; tests/service/test_layering.py checks the
imports).
"""
