"""Who is calling: the one place that turns a request into a job owner.

Every job route depends on `current_owner`, and every job record stores the owner that
created it; a job is visible only to its owner (another key gets 404, so ids do not leak).

Keys come from two places, both checked on every request:
- `NVC_API_KEYS` (settings): plain keys handed to the process; only their SHA-256 is kept
  in memory once the app is built.
- the key file of `nvc keys create|list|revoke` (`NVC_API_KEYS_FILE`, default
  DATA_DIR/api-keys.json): one JSON record per key with its SHA-256, never the key itself.
  The API re-reads it when it changes (looked at most once a second), so a revoked key is
  refused within a second and a new one works without a restart.

Why SHA-256 and not scrypt: keys are 256-bit random tokens made by `nvc keys create`, so a
slow hash adds nothing against guessing and would cost milliseconds on every request. The
presented key is hashed and compared with every known hash with `hmac.compare_digest`, with
no early exit, so the time taken does not depend on which key (if any) matched.

Open or closed: with no key configured anywhere the service is open and every caller is
`anonymous` (the single-machine `nvc serve` on 127.0.0.1 case, which says so when it starts).
As soon as any key exists (settings, or a key file, even one whose keys are all revoked) a
key is required, and a process that has required keys once keeps requiring them: deleting
the key file of a running API does not open it.

A request presents its key as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). The
owner of a job is `key-` + the first 16 hex digits of the key's SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from fastapi import Request

from service.problems import Problem

ANONYMOUS = "anonymous"
TOKEN_PREFIX = "nvc_"
FILE_VERSION = 1
log = logging.getLogger("nvc.auth")


def hash_key(key: str) -> str:
    """SHA-256 (hex) of a key: what the key file stores and what requests are matched on."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def owner_of_hash(digest: str) -> str:
    return "key-" + digest[:16]


def owner_of_key(key: str) -> str:
    """The job owner of requests made with `key` (never the key itself)."""
    return owner_of_hash(hash_key(key))


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


# ----------------------------------------------------------------------------- key file


@dataclass
class KeyRecord:
    """One key in the key file: its id and name for people, its SHA-256 for the API."""

    id: str
    name: str
    sha256: str
    created_at: float
    revoked_at: float | None = None

    @property
    def owner(self) -> str:
        return owner_of_hash(self.sha256)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyFileError(Exception):
    """The key file is unreadable or not in the expected format."""


class KeyFile:
    """The JSON file `nvc keys` manages. Writes are atomic (temp file + rename) and
    serialised with an flock on a sibling lock file; the file is created mode 0600."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> list[KeyRecord]:
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
                raise KeyFileError(f"{self.path}: not a version {FILE_VERSION} NVC key file")
            records = [KeyRecord(**entry) for entry in doc.get("keys", [])]
        except (OSError, ValueError, TypeError) as exc:
            raise KeyFileError(f"{self.path}: {exc}") from exc
        for record in records:
            if len(record.sha256) != 64 or any(c not in "0123456789abcdef" for c in record.sha256):
                raise KeyFileError(f"{self.path}: key {record.id!r} has no valid sha256")
        return records

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _save(self, records: list[KeyRecord]) -> None:
        doc = {"version": FILE_VERSION, "keys": [asdict(r) for r in records]}
        fd, tmp = tempfile.mkstemp(prefix=".api-keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def create(self, name: str = "") -> tuple[str, KeyRecord]:
        """Make a new random key; returns (the key, its record). Only the record is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            records = self.load()
            ids = {r.id for r in records}
            key_id = "k" + secrets.token_hex(4)
            while key_id in ids:
                key_id = "k" + secrets.token_hex(4)
            record = KeyRecord(id=key_id, name=name, sha256=hash_key(token), created_at=time.time())
            self._save(records + [record])
        return token, record

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked (it stays listed). Raises KeyError for an unknown id."""
        with self._locked():
            records = self.load()
            for record in records:
                if record.id == key_id:
                    if record.revoked_at is None:
                        record.revoked_at = time.time()
                        self._save(records)
                    return record
        raise KeyError(key_id)


# ----------------------------------------------------------------------------- key ring


class KeyRing:
    """The keys one API process accepts: settings keys plus the key file (re-read on change)."""

    def __init__(self, settings_keys: list[str], key_file: Path | None, *, check_interval: float = 1.0):
        self._settings_hashes = [hash_key(k) for k in settings_keys]
        self._file = KeyFile(key_file) if key_file is not None else None
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._file_stamp: tuple | None = None
        self._file_active: list[str] = []
        self._file_revoked: list[str] = []
        self._required = bool(self._settings_hashes)
        self._refresh(force=True)

    @classmethod
    def from_settings(cls, settings) -> KeyRing:
        return cls(settings.api_keys, settings.resolved_api_keys_file)

    def _refresh(self, force: bool = False) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked_at < self._check_interval:
            return
        with self._lock:
            self._checked_at = now
            try:
                st = self._file.path.stat()
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stamp = None
            if stamp == self._file_stamp:
                return
            if stamp is None:
                self._file_active, self._file_revoked = [], []
            else:
                try:
                    records = self._file.load()
                except KeyFileError as exc:  # keep the last good keys rather than open up or lock out
                    log.error("ignoring the key file: %s", exc)
                    return
                self._file_active = [r.sha256 for r in records if r.active]
                self._file_revoked = [r.sha256 for r in records if not r.active]
                self._required = True
            self._file_stamp = stamp

    @property
    def required(self) -> bool:
        """True once any key is configured (and from then on, for this process)."""
        self._refresh()
        return self._required

    def lookup(self, key: str) -> tuple[str | None, bool]:
        """(owner, revoked): the owner when `key` is an active key; `revoked` when it was one."""
        self._refresh()
        digest = hash_key(key)
        match = None
        for known in self._settings_hashes + self._file_active:
            if hmac.compare_digest(digest, known):
                match = known
        revoked = False
        for known in self._file_revoked:
            if hmac.compare_digest(digest, known):
                revoked = True
        return (owner_of_hash(match) if match is not None else None), revoked and match is None


def keyring_of(request: Request) -> KeyRing:
    ring = getattr(request.app.state, "keyring", None)
    if ring is None:
        ring = request.app.state.keyring = KeyRing.from_settings(request.app.state.services.settings)
    return ring


def resolve_owner(request: Request, ring: KeyRing) -> str:
    """The owner of this request; raises a 401 problem when a key is needed and not valid."""
    if not ring.required:
        return ANONYMOUS
    key = presented_key(request)
    headers = {"WWW-Authenticate": "Bearer"}
    if key is None:
        raise Problem(401, "this service needs an API key: send `Authorization: Bearer <key>`", slug="unauthorized",
                      headers=headers)
    owner, revoked = ring.lookup(key)
    if owner is None:
        detail = "this API key was revoked" if revoked else "the API key is not valid"
        raise Problem(401, detail, slug="unauthorized", headers=headers)
    return owner


async def current_owner(request: Request) -> str:
    """FastAPI dependency: the owner id of this request, within its rate limit.

    401 when keys are required and the request has no valid one; 429 (with Retry-After)
    when the owner made more requests than NVC_RATE_LIMIT_PER_MINUTE allows.
    """
    from app.limits import check_rate

    owner = resolve_owner(request, keyring_of(request))
    await check_rate(request, owner)
    return owner
