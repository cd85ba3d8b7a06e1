"""Limits that keep one caller (or one slow network) from taking the service down.

- Rate: a token bucket per owner in Redis (`<prefix>rate:<owner>`), refilled at
  NVC_RATE_LIMIT_PER_MINUTE and holding at most NVC_RATE_LIMIT_BURST requests. One Lua script
  reads Redis' own clock, refills, takes a token or says how long until the next one, so every
  API replica enforces the same budget. Beyond it: 429 with `Retry-After`.
- Concurrency: each owner's queued and running jobs are members of a sorted set
  (`<prefix>active:<owner>`). A submission reserves its job id there *before* its upload is
  read (so a refused upload costs nothing), refreshes the reservation while the upload runs,
  and releases it if the upload fails. Finished jobs are pruned lazily, only when the set is
  full, by looking at their records; a reservation without a record (an API that died
  mid-upload) is pruned once it has not been refreshed for a while. Beyond
  NVC_MAX_ACTIVE_JOBS: 429 with `Retry-After`.
- Time: `RequestTimeoutMiddleware` answers 504 when a request has not started its response
  within NVC_REQUEST_TIMEOUT_SECONDS (a hung Redis or object store), and 408 when an upload
  sends nothing for that long. Each body chunk that arrives restarts the clock, so a large
  upload on a slow link is fine as long as it keeps moving; once the response has started
  (a long download) the clock stops.
"""

from __future__ import annotations

import math
import time

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import Problem, problem_response

#: A reservation (job id without a record) not refreshed for this long belongs to a dead upload.
MIN_STALE_RESERVATION_SECONDS = 60.0
#: Uploads refresh their reservation at most this often.
TOUCH_INTERVAL_SECONDS = 10.0
#: Retry-After of a 429 for too many active jobs: about one small job's duration.
ACTIVE_RETRY_AFTER_SECONDS = 5

_TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 2)
return {allowed, tostring(wait)}
"""

_RESERVE = """
local limit = tonumber(ARGV[1])
local now = tonumber(ARGV[3])
local stale = tonumber(ARGV[5])
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id = members[i]
    local state = redis.call('HGET', ARGV[4] .. id, 'state')
    if state then
      if state ~= 'queued' and state ~= 'running' then redis.call('ZREM', KEYS[1], id) end
    elseif now - tonumber(members[i + 1]) > stale then
      redis.call('ZREM', KEYS[1], id)
    end
  end
  n = redis.call('ZCARD', KEYS[1])
end
if n >= limit then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return 1
"""


def _services(request: Request):
    return request.app.state.services


def rate_key(prefix: str, owner: str) -> str:
    return f"{prefix}rate:{owner}"


def active_key(prefix: str, owner: str) -> str:
    return f"{prefix}active:{owner}"


async def check_rate(request: Request, owner: str) -> None:
    """Take one request from `owner`'s bucket, or raise a 429 problem with Retry-After."""
    services = _services(request)
    settings = services.settings
    if settings.rate_limit_per_minute <= 0:
        return
    script = getattr(request.app.state, "_token_bucket", None)
    if script is None:
        script = request.app.state._token_bucket = services.redis.register_script(_TOKEN_BUCKET)
    rate = settings.rate_limit_per_minute / 60.0
    allowed, wait = await script(keys=[rate_key(settings.key_prefix, owner)],
                                 args=[repr(rate), str(settings.rate_limit_burst)])
    if int(allowed) != 1:
        retry_after = max(1, math.ceil(float(wait)))
        raise Problem(
            429, f"too many requests: this key may make {settings.rate_limit_per_minute} requests per minute "
            f"(bursts of {settings.rate_limit_burst}); retry in {retry_after} s",
            slug="rate-limited", headers={"Retry-After": str(retry_after)},
        )


class ActiveJobs:
    """Per-owner reservations of queued + running jobs (see the module docstring)."""

    def __init__(self, services, owner: str):
        self.services = services
        self.settings = services.settings
        self.key = active_key(self.settings.key_prefix, owner)
        self._touched = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.max_active_jobs > 0

    async def reserve(self, job_id: str) -> None:
        """Reserve a slot for `job_id` or raise a 429 problem."""
        if not self.enabled:
            return
        s = self.settings
        stale = max(MIN_STALE_RESERVATION_SECONDS, 3 * s.request_timeout_seconds)
        ok = await self.services.redis.eval(
            _RESERVE, 1, self.key, str(s.max_active_jobs), job_id, repr(time.time()),
            f"{s.key_prefix}job:", repr(stale), str(s.job_ttl_seconds),
        )
        if int(ok) != 1:
            raise Problem(
                429, f"this key already has {s.max_active_jobs} queued or running jobs (the limit); "
                "submit more when some have finished", slug="too-many-jobs",
                headers={"Retry-After": str(ACTIVE_RETRY_AFTER_SECONDS)},
            )
        self._touched = time.monotonic()

    async def touch(self, job_id: str) -> None:
        """Keep a reservation fresh while its upload is still arriving (cheap, throttled)."""
        if not self.enabled or time.monotonic() - self._touched < TOUCH_INTERVAL_SECONDS:
            return
        self._touched = time.monotonic()
        await self.services.redis.zadd(self.key, {job_id: time.time()}, xx=True)

    async def release(self, job_id: str) -> None:
        if self.enabled:
            await self.services.redis.zrem(self.key, job_id)


class RequestTimeoutMiddleware:
    """504 when no response has started within `timeout` seconds of the last sign of life
    (request start, or the last body chunk received); 408 when it was the upload that stalled."""

    def __init__(self, app: ASGIApp, timeout: float):
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        waiting_for_client = False  # inside receive(): the request body is late, not us
        timeout = self.timeout

        with anyio.CancelScope() as deadline:
            deadline.deadline = anyio.current_time() + timeout

            async def receive_wrapper() -> Message:
                nonlocal waiting_for_client
                waiting_for_client = True
                message = await receive()  # a timeout here leaves the flag set: the client stalled
                waiting_for_client = False
                if message["type"] == "http.request" and not started:
                    deadline.deadline = anyio.current_time() + timeout
                return message

            async def send_wrapper(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    deadline.deadline = math.inf
                await send(message)

            await self.app(scope, receive_wrapper, send_wrapper)

        if deadline.cancelled_caught and not started:
            if waiting_for_client:
                response = problem_response(
                    408, f"the upload stalled: nothing arrived for {timeout:g} s", slug="upload-timeout",
                    instance=scope.get("path"),
                )
            else:
                response = problem_response(
                    504, f"the request was not answered within {timeout:g} s (a dependency is slow or hung); "
                    "try again", slug="request-timeout", instance=scope.get("path"), headers={"Retry-After": "5"},
                )
            await response(scope, receive, send)
