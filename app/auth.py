"""Who is calling: the one place that turns a request into a job owner.

Every job route depends on `current_owner`, and every job record stores the owner that
created it; a job is visible only to its owner (others get 404, so ids do not leak). With
no NVC_API_KEYS configured the service is open and every caller is `anonymous` (the
single-machine `nvc serve` case). With keys configured a request must carry one, as
`Authorization: Bearer <key>` or `X-API-Key: <key>`, and the owner is a digest of the key,
never the key itself. Richer key management (issue 5) replaces `resolve_owner` only.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from app.problems import Problem

ANONYMOUS = "anonymous"


def owner_of_key(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def resolve_owner(request: Request, api_keys: list[str]) -> str:
    if not api_keys:
        return ANONYMOUS
    key = presented_key(request)
    if key is None:
        raise Problem(401, "this service needs an API key: send `Authorization: Bearer <key>`", slug="unauthorized",
                      headers={"WWW-Authenticate": "Bearer"})
    if not any(hmac.compare_digest(key.encode(), known.encode()) for known in api_keys):
        raise Problem(401, "the API key is not valid", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return owner_of_key(key)


async def current_owner(request: Request) -> str:
    """FastAPI dependency: the owner id of this request (raises 401 when keys are required)."""
    return resolve_owner(request, request.app.state.services.settings.api_keys)
