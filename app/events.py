"""Job events for long-polls: one Redis pub/sub connection per API process, shared by every
`GET /jobs/{id}?wait=S`, and a bound on how many may wait at once.

Why: a pub/sub subscription holds a Redis connection for as long as it lasts, so a connection
per long-poll let about 50 concurrent waits from one client exhaust the connections ("Too many
connections") and every request answered 503 while Redis was healthy. Here one listener
pattern-subscribes to every job's event channel and wakes the waiters of that job; beyond
NVC_MAX_LONG_POLLS waiters a long-poll is refused with 429 and Retry-After (the client polls
again later), never a 503.

A waiter never depends on the listener alone: it re-reads the record at least every
RECHECK_SECONDS, so an event missed while the listener reconnects costs a few seconds, never
a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from service.problems import Problem

log = logging.getLogger("nvc.api")

#: A waiter re-reads the job record at least this often (events are wake-ups, not the truth).
RECHECK_SECONDS = 5.0
#: Retry-After of a 429 when every long-poll slot is taken.
RETRY_AFTER_SECONDS = 2


class JobEvents:
    """Wake-ups for job records, from one shared pattern subscription."""

    def __init__(self, redis_client, events_prefix: str, max_waiters: int):
        self.redis = redis_client
        self.pattern = f"{events_prefix}*"
        self.prefix = events_prefix
        self.max_waiters = max_waiters
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._count = 0
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return self._count

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str):
        """A slot for waiting on `job_id`: yields an asyncio.Event set on each of its events.
        Raises a 429 problem when all NVC_MAX_LONG_POLLS slots are taken."""
        if self._count >= self.max_waiters:
            raise Problem(
                429, f"{self._count} long-polls are waiting already (the limit of NVC_MAX_LONG_POLLS): poll again "
                "later, or without ?wait=", slug="too-many-long-polls", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.start()
        event = asyncio.Event()
        self._count += 1
        self._waiters[job_id].add(event)
        try:
            yield event
        finally:
            self._count -= 1
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, channel: str) -> None:
        job_id = channel[len(self.prefix):] if channel.startswith(self.prefix) else channel
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def _listen(self) -> None:
        """Hold the one subscription, reconnecting with backoff while Redis is away."""
        delay = 0.5
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(self.pattern)
                delay = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=RECHECK_SECONDS)
                    if message and message.get("type") == "pmessage":
                        self._wake(str(message["channel"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: waiters fall back to re-reading the record
                log.warning("job event listener lost Redis (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
