"""Problem data: an error the API answers as an RFC 9457 problem, without the web framework.

Why here and not in `app/problems.py`: the upload check (`service.validate`) and the
submission domain (`service.submission`) refuse input with a status and a readable detail,
and the worker reports the same refusals as a job's `error`; neither may import FastAPI. The
API's handlers (`app/problems.py`) turn a `Problem` into `application/problem+json`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = ["Problem"]


class Problem(Exception):
    """An error answered as problem+json. `slug` names the problem type (urn:nvc:problem:<slug>)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extensions = extensions
