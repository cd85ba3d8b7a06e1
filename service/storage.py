"""Object storage for uploads and results: one small interface, two backends.

Why an interface this narrow: the API only ever streams an upload in, streams a result out
(or hands out a presigned URL), and deletes a job's objects; a worker downloads an input to a
local file and uploads an output file. Everything else (listing, sweeping) is housekeeping.
Keeping it this small is what lets the local-directory default and any S3-compatible store
(MinIO, AWS, ...) behave the same under the same tests.

All methods are blocking; the async API calls them in a thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from service.settings import Settings

READ_CHUNK = 1024 * 1024


class StorageError(Exception):
    """The storage backend failed (unreachable, misconfigured, object missing)."""


class ObjectNotFound(StorageError):
    """No object under that key."""


class Writer(Protocol):
    """An upload in progress: `write` chunks, then `commit` (or `abort`)."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    """What the service needs from object storage."""

    def check(self) -> None:
        """Raise StorageError unless the store is reachable and writable."""

    def open_writer(self, key: str) -> Writer: ...
    def put_file(self, key: str, path: Path) -> int: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def local_path(self, key: str) -> Path | None:
        """A path to read the object in place, when the backend is a filesystem."""

    def iter_chunks(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def presigned_url(self, key: str, filename: str, content_type: str) -> str | None:
        """A time-limited URL a client can GET directly, or None when the backend has none."""

    def list_job_prefixes(self) -> Iterator[tuple[str, float]]:
        """(job id, newest modification time) for every `jobs/<id>/` prefix."""


#: Characters an object key may hold: keys are built from job ids and fixed names, so anything
#: else (NUL, backslashes, control characters, '..' segments) is a bug or an attack.
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")


def _check_key(key: str) -> str:
    """Refuse any key that could name something outside the storage root (or prefix)."""
    parts = key.split("/")
    if (not key or len(key) > 512 or key.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or not set(key) <= _KEY_CHARS):
        raise StorageError(f"invalid object key {key!r}")
    return key


# ----------------------------------------------------------------------------- local


class _LocalWriter:
    def __init__(self, final: Path):
        self._final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def commit(self) -> int:
        self._file.close()
        os.replace(self._tmp, self._final)  # readers never see a half-written object
        return self._size

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        try:
            self._final.parent.rmdir()  # only if nothing else of this job is there
        except OSError:
            pass


class LocalStorage:
    """Objects as files under one folder (the default; API and workers share the folder)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = self.root / _check_key(key)
        # belt and braces: even a symlink planted inside the root cannot lead out of it
        if not path.resolve().is_relative_to(self.root):
            raise StorageError(f"object key {key!r} resolves outside the storage folder")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ready-"):
                pass
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not writable: {exc}") from exc

    def open_writer(self, key: str) -> Writer:
        return _LocalWriter(self._path(key))

    def put_file(self, key: str, path: Path) -> int:
        writer = _LocalWriter(self._path(key))
        try:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, writer._file, READ_CHUNK)
                writer._size = src.tell()
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        shutil.copyfile(src, path)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def iter_chunks(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def delete_prefix(self, prefix: str) -> int:
        target = self._path(prefix.rstrip("/"))
        if not target.exists():
            return 0
        if target.is_file():
            target.unlink()
            return 1
        count = sum(1 for p in target.rglob("*") if p.is_file())
        shutil.rmtree(target, ignore_errors=True)
        return count

    def presigned_url(self, key: str, filename: str, content_type: str) -> str | None:
        return None

    def list_job_prefixes(self) -> Iterator[tuple[str, float]]:
        jobs = self.root / "jobs"
        if not jobs.is_dir():
            return
        for entry in jobs.iterdir():
            if entry.is_dir():
                times = [entry.stat().st_mtime] + [p.stat().st_mtime for p in entry.iterdir()]
                yield entry.name, max(times)


# ----------------------------------------------------------------------------- S3


class _S3Writer:
    """Multipart upload holding at most one part in memory."""

    def __init__(self, storage: S3Storage, key: str):
        self._s3 = storage
        self._key = key
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._upload_id: str | None = None
        self._size = 0

    def _flush_part(self) -> None:
        client = self._s3.client
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=self._s3.bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        answer = client.upload_part(
            Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._buffer.clear()

    def write(self, data: bytes) -> None:
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= self._s3.part_bytes:
            rest = bytes(self._buffer[self._s3.part_bytes :])
            del self._buffer[self._s3.part_bytes :]
            self._flush_part()
            self._buffer += rest

    def commit(self) -> int:
        client = self._s3.client
        if self._upload_id is None:  # small object: one PUT
            client.put_object(Bucket=self._s3.bucket, Key=self._key, Body=bytes(self._buffer))
            self._buffer.clear()
            return self._size
        if self._buffer:
            self._flush_part()
        client.complete_multipart_upload(
            Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )
        return self._size

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                self._s3.client.abort_multipart_upload(Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id)
            except Exception:  # best effort; a lifecycle rule or the sweeper removes leftovers
                pass


class S3Storage:
    """Objects in any S3-compatible store (MinIO in docker-compose, AWS S3, ...)."""

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix.strip("/")
        self.part_bytes = settings.s3_part_bytes
        self.presign_seconds = settings.s3_presign_seconds
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        common = dict(
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=config,
        )
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        self._complete_client = None
        self._make_client = lambda read_timeout: boto3.client(  # noqa: E731
            "s3", endpoint_url=settings.s3_endpoint_url,
            **{**common, "config": config.merge(Config(read_timeout=read_timeout))},
        )
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self._presign_client = (
            self.client if public == settings.s3_endpoint_url else boto3.client("s3", endpoint_url=public, **common)
        )
        self._create_bucket = settings.s3_create_bucket
        self._bucket_ready = False

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound") and self._create_bucket:
                try:
                    self.client.create_bucket(Bucket=self.bucket)
                except ClientError as create_exc:
                    if create_exc.response.get("Error", {}).get("Code") not in (
                        "BucketAlreadyOwnedByYou",
                        "BucketAlreadyExists",
                    ):
                        raise
            else:
                raise
        self._bucket_ready = True

    def check(self) -> None:
        try:
            self._ensure_bucket()
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageError(f"S3 bucket {self.bucket!r} is not reachable: {exc}") from exc

    def open_writer(self, key: str) -> Writer:
        self._ensure_bucket()
        return _S3Writer(self, self._key(key))

    def put_file(self, key: str, path: Path) -> int:
        from boto3.s3.transfer import TransferConfig

        self._ensure_bucket()
        config = TransferConfig(multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes)
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=config)
        return Path(path).stat().st_size

    def _not_found(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        self._ensure_bucket()
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(key) from None
            raise

    def local_path(self, key: str) -> Path | None:
        return None

    def iter_chunks(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        self._ensure_bucket()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(key) from None
            raise
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        self._ensure_bucket()
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(key) from None
            raise

    def delete_prefix(self, prefix: str) -> int:
        full = self._key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        self._ensure_bucket()
        count = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                count += len(objects)
        return count

    def presigned_url(self, key: str, filename: str, content_type: str) -> str | None:
        return self._presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": content_type,
            },
            ExpiresIn=self.presign_seconds,
        )

    # -- direct-to-storage uploads (service/direct_upload.py): the client PUTs the parts itself

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload of `key`; its S3 upload id."""
        self._ensure_bucket()
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"]

    def presign_part(self, key: str, upload_id: str, number: int, seconds: int) -> str:
        """A URL the client PUTs part `number` (1-based) of the upload to, valid `seconds`."""
        return self._presign_client.generate_presigned_url(
            "upload_part", Params={"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id,
                                   "PartNumber": number}, ExpiresIn=seconds,
        )

    def list_parts(self, key: str, upload_id: str) -> list[dict]:
        """The parts stored so far: [{"PartNumber", "Size", "ETag"}] in part order."""
        parts: list[dict] = []
        paginator = self.client.get_paginator("list_parts")
        for page in paginator.paginate(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id):
            parts += [{"PartNumber": p["PartNumber"], "Size": p["Size"], "ETag": p["ETag"]}
                      for p in page.get("Parts", [])]
        return sorted(parts, key=lambda p: p["PartNumber"])

    def complete_multipart(self, key: str, upload_id: str, parts: list[dict]) -> None:
        """Assemble the parts. S3 may take minutes on a multi-GB object (it keeps the connection
        alive meanwhile), longer than the usual read timeout: this call gets a client of its own."""
        if self._complete_client is None:
            self._complete_client = self._make_client(read_timeout=900)
        self._complete_client.complete_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]},
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of an object (fewer at its end)."""
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                          Range=f"bytes={start}-{start + length - 1}")["Body"]
        except ClientError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(key) from None
            raise
        try:
            return body.read()
        finally:
            body.close()

    def list_job_prefixes(self) -> Iterator[tuple[str, float]]:
        base = self._key("jobs") + "/"
        self._ensure_bucket()
        newest: dict[str, float] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                job = obj["Key"][len(base) :].split("/", 1)[0]
                stamp = obj["LastModified"].timestamp()
                newest[job] = max(newest.get(job, 0.0), stamp)
        yield from newest.items()


def make_storage(settings: Settings) -> Storage:
    """The backend selected by NVC_STORAGE_BACKEND."""
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.resolved_storage_dir)


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def sweep_orphans(storage: Storage, job_exists, min_age_seconds: float = 3600.0, now: float | None = None) -> list[str]:
    """Delete `jobs/<id>/` objects whose job record is gone (expired or never created).

    Objects younger than `min_age_seconds` are kept: an upload in flight has objects before
    its record exists. Returns the job ids swept.
    """
    now = time.time() if now is None else now
    swept = []
    for job_id, newest in list(storage.list_job_prefixes()):
        if now - newest < min_age_seconds or job_exists(job_id):
            continue
        storage.delete_prefix(job_prefix(job_id))
        swept.append(job_id)
    return swept
