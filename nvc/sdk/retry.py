"""Retry policy: exponential backoff on transient failures, honouring ``Retry-After``.

Retrying a ``POST /compress`` is safe because every submission carries an
``Idempotency-Key`` that stays the same across its attempts: the service answers a repeat
with the job it already created instead of creating a second one.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

#: Transport failures worth another attempt: the connection could not be made, was dropped,
#: or stalled. (Protocol misuse on our side, bad URLs and proxies are not retried.)
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_attempts`` counts the first try. The n-th retry waits
    ``min(max_backoff, backoff * multiplier**(n-1))``, scaled by a random factor in
    ``[1 - jitter, 1]`` so that many clients do not retry in lockstep; a ``Retry-After``
    header, when present, replaces that delay (capped at ``max_retry_after``).
    """

    max_attempts: int = 6
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 20.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def should_retry(self, status: int, headers: "httpx.Headers | dict[str, str] | None" = None) -> bool:
        """Retry this status? Also a 409 that carries ``Retry-After``: the service's answer while
        an earlier attempt with the same Idempotency-Key is still being received."""
        if status in self.retry_statuses:
            return True
        return status == 409 and headers is not None and "retry-after" in {k.lower() for k in headers.keys()}

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``retry_number`` (1 for the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(0, retry_number - 1))
        if self.jitter > 0:
            base *= 1.0 - random.random() * min(self.jitter, 1.0)
        return base


#: A policy that never retries (useful in tests and for interactive calls that must fail fast).
NO_RETRY = RetryPolicy(max_attempts=1)
