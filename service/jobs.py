"""Job records in Redis: one hash per job, state changes as atomic compare-and-set.

Why Lua scripts: the API (cancel), a worker (start, progress, finish) and a redelivered copy
of the same Celery message can all touch one job at once. Each state change is one script
that checks the current state, writes the new fields, moves the per-state counters used by
/metrics, refreshes the TTL and publishes an event, all atomically; whoever loses the race
sees the state that won and backs off.

The same record format is used from sync code (workers: `JobStore`) and async code (the
API: `AsyncJobStore`); the key layout and (de)serialisation live in module functions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
KINDS = ("compress", "decompress")

#: Field name -> type, for every field a job record may hold.
FIELDS: dict[str, type] = {
    "id": str,
    "kind": str,
    "state": str,
    "owner": str,
    "progress": float,
    "profile": str,
    "output_format": str,
    "input_name": str,
    "input_format": str,
    "input_key": str,
    "input_size": int,
    "input_sha256": str,
    "output_key": str,
    "output_name": str,
    "output_size": int,
    "output_sha256": str,
    "voxel_sha256": str,
    "bits_per_voxel": float,
    "shape": list,
    "dtype": str,
    "created_at": float,
    "started_at": float,
    "finished_at": float,
    "expires_at": float,
    "worker": str,
    "device": str,
    "error": str,
    "attempts": int,
    "codec_seconds": float,
    "verify_seconds": float,
    "queue": str,
    "idempotency_key": str,
    "result_deleted": bool,
    "attempt_id": str,
    "heartbeat_at": float,
    # DICOM jobs (only modality, UIDs, description, counts and dimensions: never patient data)
    "files": int,
    "instances_coded": int,
    "files_verbatim": int,
    "verbatim_reasons": list,
    "series": list,
    "transfer_syntax": str,
    "callback_url": str,
    "notifications": list,
    # attempts that woke up to find another attempt owning the job, and stopped (the last one's account)
    "stale_attempts": int,
    "stale_attempt_note": str,
}

#: Duration histograms kept in Redis (seconds); buckets suit tiny to multi-GB jobs.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# ARGV: new state, ttl, event channel, n, n allowed states, expires_at, then name/value pairs:
# a name starting with '?' is a guard (the record's field must hold that value), others are
# written. KEYS: job hash, stats hash, the index of running jobs (a sorted set), the notification
# schedule (a sorted set: a job that ends with a callback_url is due there at once).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
local n = tonumber(ARGV[4])
local ok = false
for i = 1, n do if ARGV[4 + i] == cur then ok = true end end
if not ok then return {0, cur} end
local fields = {'state', ARGV[1], 'expires_at', ARGV[5 + n]}
for i = 6 + n, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 1) == '?' then
    if redis.call('HGET', KEYS[1], string.sub(ARGV[i], 2)) ~= ARGV[i + 1] then return {0, cur} end
  else
    table.insert(fields, ARGV[i])
    table.insert(fields, ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if cur ~= ARGV[1] then
  local kind = redis.call('HGET', KEYS[1], 'kind')
  redis.call('HINCRBY', KEYS[2], 'current:' .. cur, -1)
  redis.call('HINCRBY', KEYS[2], 'current:' .. ARGV[1], 1)
  redis.call('HINCRBY', KEYS[2], 'total:' .. kind .. ':' .. ARGV[1], 1)
end
local id = redis.call('HGET', KEYS[1], 'id')
if id then
  if ARGV[1] == 'running' then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[3], tonumber(t[1]), id)
  elseif cur == 'running' then
    redis.call('ZREM', KEYS[3], id)
  end
end
if cur ~= ARGV[1] and (ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled') then
  local callback = redis.call('HGET', KEYS[1], 'callback_url')
  if callback and callback ~= '' and id then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[4], tonumber(t[1]), id)  -- due now: service/notify.py delivers it
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PUBLISH', ARGV[3], ARGV[1])
return {1, cur}
"""

# Progress and heartbeat of a running attempt. ARGV: progress ('' keeps it), attempt id ('':
# any), now. Returns the state, or 'superseded' when another attempt owns the job now.
_PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == 'running' then
  if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt_id') ~= ARGV[2] then return 'superseded' end
  if ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'heartbeat_at', ARGV[3])
  else
    redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[3])
  end
end
return cur or ''
"""


class Keys:
    """Redis key names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def idempotency(self, owner: str, key_digest: str) -> str:
        return f"{self.prefix}idem:{owner}:{key_digest}"

    def owned(self, owner: str) -> str:
        """Sorted set of the ids of an owner's jobs, scored by creation time (GET /jobs)."""
        return f"{self.prefix}owned:{owner}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    @property
    def running(self) -> str:
        """Sorted set of the ids of running jobs (the watchdog's work list)."""
        return f"{self.prefix}running"

    @property
    def notify(self) -> str:
        """Sorted set of job ids whose end must be notified to their callback_url, by due time."""
        return f"{self.prefix}notify"

    def callback_default(self, owner: str) -> str:
        """The owner's default callback_url (PUT /callback)."""
        return f"{self.prefix}callback:{owner}"

    @property
    def epoch(self) -> str:
        """A random value set once per Redis data set: a new value means the store lost its data."""
        return f"{self.prefix}epoch"

    @property
    def hist(self) -> str:
        return f"{self.prefix}hist"


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Python values -> Redis hash strings (None values are dropped by callers)."""
    out = {}
    for name, value in fields.items():
        if name not in FIELDS:
            raise KeyError(f"unknown job field {name!r}")
        if value is None:
            continue
        if FIELDS[name] is list:
            out[name] = json.dumps(list(value))
        elif FIELDS[name] is bool:
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    return out


def decode_record(raw: dict[str, str]) -> dict[str, Any] | None:
    """Redis hash -> typed dict (None when the job does not exist)."""
    if not raw or "state" not in raw:
        return None
    record: dict[str, Any] = {}
    for name, value in raw.items():
        kind = FIELDS.get(name)
        if kind is None:
            continue
        if kind is list:
            record[name] = json.loads(value)
        elif kind is bool:
            record[name] = value == "1"
        else:
            record[name] = kind(value)
    return record


def _transition_args(
    keys: Keys, job_id: str, new_state: str, allowed: Iterable[str], ttl: int, fields: dict[str, Any],
    guard: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    if new_state not in STATES:
        raise ValueError(new_state)
    allowed = list(allowed)
    flat: list[str] = []
    for name, value in encode_fields(guard or {}).items():
        flat += ["?" + name, value]
    for name, value in encode_fields(fields).items():
        flat += [name, value]
    args = [new_state, str(ttl), keys.events(job_id), str(len(allowed)), *allowed, str(time.time() + ttl), *flat]
    return [keys.job(job_id), keys.stats, keys.running, keys.notify], args


def _hist_commands(name: str, labels: str, value: float) -> list[tuple[str, str, float]]:
    """(op, field, amount) triples that record one observation of a histogram."""
    ops = [("HINCRBY", f"{name}|{labels}|le|{b}", 1) for b in DURATION_BUCKETS if value <= b]
    ops += [("HINCRBY", f"{name}|{labels}|le|+Inf", 1), ("HINCRBY", f"{name}|{labels}|count", 1)]
    ops.append(("HINCRBYFLOAT", f"{name}|{labels}|sum", value))
    return ops


_INT_DTYPE = re.compile(r"^[<>=|]?u?int(8|16|32|64)$")


def dtype_bytes(dtype: str | None) -> int | None:
    """Bytes per voxel of an integer dtype name ("uint16", "int8", ...); None if unknown."""
    match = _INT_DTYPE.match(dtype or "")
    return int(match.group(1)) // 8 if match else None


def size_facts(record: dict[str, Any]) -> dict[str, Any]:
    """What a job's sizes mean, the same way everywhere (`nvc info`, the CLI, the SDK, the page):

    - `raw_bytes`: the voxels as stored integers (shape x bytes per voxel);
    - `ratio`: raw_bytes / the .nvc's bytes (the result of a compress job, the upload of a
      decompress job), the codec's `compression_ratio`;
    - `upload_ratio` (compress jobs): the uploaded file's bytes / the .nvc's bytes (a .nii.gz
      upload is gzip-compressed already, so this is below `ratio`).
    """
    shape, itemsize = record.get("shape"), dtype_bytes(record.get("dtype"))
    raw = None
    if shape and itemsize:
        raw = itemsize
        for extent in shape:
            raw *= int(extent)
    compress = record.get("kind") == "compress"
    nvc_size = record.get("output_size") if compress else record.get("input_size")
    upload = record.get("input_size")
    return {
        "raw_bytes": raw,
        "ratio": raw / nvc_size if raw and nvc_size else None,
        "upload_ratio": upload / nvc_size if compress and upload and nvc_size else None,
    }


def _queue_create(pipe, keys: Keys, ttl: int, record: dict[str, Any]) -> None:
    """The commands that create a job record (the same for the sync and the async store)."""
    pipe.hset(keys.job(record["id"]), mapping=encode_fields(record))
    pipe.expire(keys.job(record["id"]), ttl)
    pipe.zadd(keys.owned(record["owner"]), {record["id"]: record["created_at"]})
    # longer than any record it points to lives (a record's TTL restarts at each transition);
    # ids of expired records are dropped when the index is read
    pipe.expire(keys.owned(record["owner"]), 2 * ttl)
    pipe.hincrby(keys.stats, "current:queued", 1)
    pipe.hincrby(keys.stats, f"total:{record['kind']}:queued", 1)


def encode_cursor(score: float, job_id: str) -> str:
    """The opaque paging cursor of GET /jobs: the position just after (score, job id)."""
    return f"{score!r}_{job_id}"


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    """(score, job id) of a cursor; ValueError for one that this service did not make."""
    if not cursor:
        return None
    score, sep, job_id = cursor.partition("_")
    if not sep or not re.fullmatch(r"[0-9a-f]{32}", job_id):
        raise ValueError(f"not a cursor of this service: {cursor!r}")
    return float(score), job_id


def _before(job_id: str, score: float, after: tuple[float, str]) -> bool:
    """True when (score, job_id) comes after the cursor in newest-first order (ZREVRANGE:
    score descending, then member descending)."""
    return score < after[0] or (score == after[0] and job_id < after[1])


def new_record(
    job_id: str, kind: str, owner: str, ttl: int, **fields: Any
) -> dict[str, Any]:
    now = time.time()
    record = {
        "id": job_id,
        "kind": kind,
        "state": "queued",
        "owner": owner,
        "progress": 0.0,
        "created_at": now,
        "expires_at": now + ttl,
        "attempts": 0,
    }
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


class JobStore:
    """Job records from sync code (Celery workers)."""

    def __init__(self, redis_client, prefix: str, ttl: int):
        self.r = redis_client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self._transition = self.r.register_script(_TRANSITION)
        self._progress = self.r.register_script(_PROGRESS)

    def get(self, job_id: str) -> dict[str, Any] | None:
        return decode_record(self.r.hgetall(self.keys.job(job_id)))

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self.keys.job(job_id)))

    def create(self, record: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        _queue_create(pipe, self.keys, self.ttl, record)
        pipe.execute()

    def transition(
        self, job_id: str, new_state: str, allowed: Iterable[str], guard: dict[str, Any] | None = None, **fields: Any
    ) -> tuple[bool, str]:
        """Set `new_state` (+fields) if the current state is in `allowed` and every `guard`
        field holds its value; (done, previous state)."""
        keys, args = _transition_args(self.keys, job_id, new_state, allowed, self.ttl, fields, guard)
        done, previous = self._transition(keys=keys, args=args)
        return bool(done), previous if isinstance(previous, str) else previous.decode()

    def update(self, job_id: str, **fields: Any) -> None:
        """Write fields without a state change (only on an existing record)."""
        mapping = encode_fields(fields)
        if mapping and self.exists(job_id):
            self.r.hset(self.keys.job(job_id), mapping=mapping)

    def note_stale_attempt(self, job_id: str, note: str) -> None:
        """Record that an attempt found another attempt owning the job and stopped (`note`: what
        it did), so that what happened is on the record, not only in a worker's log."""
        key = self.keys.job(job_id)
        if self.exists(job_id):
            pipe = self.r.pipeline()
            pipe.hincrby(key, "stale_attempts", 1)
            pipe.hset(key, "stale_attempt_note", note)
            pipe.execute()

    def set_progress(self, job_id: str, progress: float | None, attempt_id: str = "") -> str:
        """Write progress (None: only the heartbeat) if the job is running under `attempt_id`;
        return the current state, or 'superseded' when another attempt owns the job."""
        value = "" if progress is None else f"{progress:.4f}"
        state = self._progress(keys=[self.keys.job(job_id)], args=[value, attempt_id, repr(time.time())])
        return state if isinstance(state, str) else state.decode()

    def count_bytes(self, direction: str, kind: str, amount: int) -> None:
        self.r.hincrby(self.keys.stats, f"bytes_{direction}:{kind}", int(amount))

    def observe(self, name: str, labels: str, value: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        for op, field, amount in _hist_commands(name, labels, value):
            getattr(pipe, op.lower())(self.keys.hist, field, amount)
        pipe.execute()


class AsyncJobStore:
    """Job records from async code (the API)."""

    def __init__(self, redis_client, prefix: str, ttl: int):
        self.r = redis_client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self._transition = self.r.register_script(_TRANSITION)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return decode_record(await self.r.hgetall(self.keys.job(job_id)))

    async def exists(self, job_id: str) -> bool:
        return bool(await self.r.exists(self.keys.job(job_id)))

    async def create(self, record: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        _queue_create(pipe, self.keys, self.ttl, record)
        await pipe.execute()

    async def list_owned(
        self, owner: str, *, states: Iterable[str] = (), limit: int = 20, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """An owner's jobs, newest first, `limit` at a time (only `states`, when given); returns
        the page and the cursor of the next one (None: this was the last). Ids whose record
        expired are dropped from the index on the way."""
        wanted = set(states)
        key = self.keys.owned(owner)
        scan = decode_cursor(cursor)  # the last position looked at
        last: tuple[float, str] | None = scan  # the last position returned
        page: list[dict[str, Any]] = []
        batch_size = 4 * limit + 1
        while True:
            top = "+inf" if scan is None else repr(scan[0])
            batch = await self.r.zrevrangebyscore(key, top, "-inf", start=0, num=batch_size, withscores=True)
            fresh = [(job_id, score) for job_id, score in batch if scan is None or _before(job_id, score, scan)]
            if not fresh:
                return page, None
            records = [decode_record(await self.r.hgetall(self.keys.job(job_id))) for job_id, _ in fresh]
            gone = [job_id for (job_id, _), record in zip(fresh, records) if record is None]
            if gone:
                await self.r.zrem(key, *gone)
            for (job_id, score), record in zip(fresh, records):
                if record is not None and (not wanted or record["state"] in wanted):
                    if len(page) == limit:
                        return page, encode_cursor(*last) if last else None
                    page.append(record)
                    last = (score, job_id)
                scan = (score, job_id)
            if len(batch) < batch_size:
                return page, None

    async def transition(
        self, job_id: str, new_state: str, allowed: Iterable[str], guard: dict[str, Any] | None = None, **fields: Any
    ) -> tuple[bool, str]:
        keys, args = _transition_args(self.keys, job_id, new_state, allowed, self.ttl, fields, guard)
        done, previous = await self._transition(keys=keys, args=args)
        return bool(done), previous if isinstance(previous, str) else previous.decode()

    async def update(self, job_id: str, **fields: Any) -> None:
        mapping = encode_fields(fields)
        if mapping and await self.exists(job_id):
            await self.r.hset(self.keys.job(job_id), mapping=mapping)

    async def delete(self, job_id: str) -> None:
        await self.r.delete(self.keys.job(job_id))

    async def count_bytes(self, direction: str, kind: str, amount: int) -> None:
        await self.r.hincrby(self.keys.stats, f"bytes_{direction}:{kind}", int(amount))

    async def stats(self) -> tuple[dict[str, str], dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats)
        pipe.hgetall(self.keys.hist)
        stats, hist = await pipe.execute()
        return stats, hist
