"""Job-end notifications: a signed POST to the job's `callback_url` when it succeeds, fails or is
cancelled, retried with backoff, each delivery recorded on the job.

Why this shape:
- Every terminal state change goes through one Lua script (`service.jobs`), whatever makes it
  (worker, API cancel, watchdog); for a job with a callback_url that script also puts the job
  id in the notification schedule (a sorted set, due now). So no ending is missed, and none is
  scheduled twice.
- Any API process delivers (`app/notifier.py` runs `deliver_due` in a loop). A delivery is
  claimed by moving its due time a lease into the future in one script, so two API processes
  never POST the same notification at once; when it succeeds it leaves the schedule, when it is
  refused (no 2xx, or no answer) it is due again after NVC_CALLBACK_RETRY_SECONDS, doubling,
  up to NVC_CALLBACK_MAX_ATTEMPTS. Receivers may see a notification again only if an API process
  died between the POST and recording it: `X-NVC-Delivery` (the job id) lets them drop repeats.
- Signature: `X-NVC-Signature: sha256=<hex HMAC-SHA256(NVC_CALLBACK_SECRET, "<timestamp>." + body)>`
  with the Unix time in `X-NVC-Timestamp`, so a receiver can check both the sender and the
  freshness (refuse old timestamps: replays).
- Server-side request forgery: a job must not make the service call into its own network. A
  target must be http(s), its host in NVC_CALLBACK_ALLOWED_HOSTS, and every address the host
  resolves to public (not loopback, private, link-local, multicast or reserved) unless
  NVC_CALLBACK_ALLOW_PRIVATE. Checked at submission (422) and again before each delivery (the
  DNS answer may have changed since). What remains: a name that resolves differently between
  that check and the connection (DNS rebinding within a second); deployments that need more
  pin egress with a network policy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from service.problems import Problem
from service.settings import Settings

#: How long a claimed delivery is held by the API process that claimed it.
CLAIM_LEASE_SECONDS = 60.0
#: Deliveries kept on a job record (the latest).
KEPT_DELIVERIES = 20

# KEYS: schedule. ARGV: now, lease, max. Claims up to `max` due ids by moving them a lease ahead.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return due
"""

_process_secret = secrets.token_hex(32)


def secret_of(settings: Settings) -> str:
    return settings.callback_secret or _process_secret


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-NVC-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    now = time.time() if now is None else now
    try:
        fresh = abs(now - float(timestamp)) <= max_age
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in (p.lower().rstrip(".") for p in allowed):
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback
                                 or ip.is_private or ip.is_unspecified)


def check_target(url: str, settings: Settings,
                 resolve: Callable[[str, int], list[str]] | None = None) -> str:
    """`url` if the service may POST to it, else a 422 problem saying why."""

    def refuse(why: str) -> Problem:
        return Problem(422, f"callback_url {url!r} is not allowed: {why}", slug="callback-not-allowed")

    if len(url) > 2048:
        raise refuse("longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("it must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise refuse("credentials in the URL are not accepted")
    host = parts.hostname
    if not settings.callback_allowed_hosts:
        raise refuse("callbacks are not enabled on this service (NVC_CALLBACK_ALLOWED_HOSTS is empty)")
    if not _host_allowed(host, settings.callback_allowed_hosts):
        raise refuse(f"host {host} is not in the allow-list (NVC_CALLBACK_ALLOWED_HOSTS)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise refuse("the port is not valid") from None
    try:
        addresses = (resolve or _resolve)(host, port)
    except OSError as exc:
        raise refuse(f"host {host} does not resolve ({exc})") from None
    if not addresses:
        raise refuse(f"host {host} does not resolve")
    if not settings.callback_allow_private:
        for address in addresses:
            if not _public(address):
                raise refuse(f"{host} resolves to {address}, a loopback, private, link-local or reserved address")
    return url


def _resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def payload(job: dict[str, Any]) -> bytes:
    """The body of a notification: the event and the job as `GET /jobs/{id}` shows it."""
    return json.dumps({"event": f"job.{job['state']}", "job": job}, sort_keys=True, separators=(",", ":")).encode()


def post(url: str, body: bytes, settings: Settings, job_id: str) -> tuple[bool, str]:
    """One delivery (blocking): (delivered, what happened)."""
    import httpx

    try:
        check_target(url, settings)
    except Problem as exc:
        return False, exc.detail
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "nvc-notify",
        "X-NVC-Timestamp": timestamp,
        "X-NVC-Signature": sign(secret_of(settings), timestamp, body),
        "X-NVC-Delivery": job_id,
    }
    try:
        answer = httpx.post(url, content=body, headers=headers, timeout=settings.callback_timeout_seconds,
                            follow_redirects=False)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return 200 <= answer.status_code < 300, f"HTTP {answer.status_code}"


async def claim_due(redis, keys, now: float | None = None, limit: int = 20) -> list[str]:
    now = time.time() if now is None else now
    return list(await redis.eval(_CLAIM, 1, keys.notify, repr(now), repr(CLAIM_LEASE_SECONDS), str(limit)))


async def deliver_due(services, job_view: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Deliver every notification that is due (from the API); the number attempted."""
    import anyio

    settings, redis, jobs = services.settings, services.redis, services.jobs
    ids = await claim_due(redis, jobs.keys)
    for job_id in ids:
        record = await jobs.get(job_id)
        if record is None or not record.get("callback_url"):
            await redis.zrem(jobs.keys.notify, job_id)
            continue
        history = list(record.get("notifications") or [])
        attempt = 1 + sum(1 for d in history if d.get("state") == record["state"])
        body = payload(job_view(record))
        delivered, outcome = await anyio.to_thread.run_sync(post, record["callback_url"], body, settings, job_id)
        history.append({"at": time.time(), "attempt": attempt, "event": f"job.{record['state']}",
                        "delivered": delivered, "outcome": outcome, "state": record["state"]})
        await jobs.update(job_id, notifications=history[-KEPT_DELIVERIES:])
        if delivered or attempt >= settings.callback_max_attempts:
            await redis.zrem(jobs.keys.notify, job_id)
        else:
            delay = settings.callback_retry_seconds * 2 ** (attempt - 1)
            await redis.zadd(jobs.keys.notify, {job_id: time.time() + delay})
    return len(ids)
