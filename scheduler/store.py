"""The artifact store: one interface, two backends (a local folder and S3 via the minio client).

Keys follow DESIGN.md's layout (`jobs/<id>/...`, `datasets/<name>/<version>/...`) in both
backends. Every key is validated, so no key can escape the local root. Writes are atomic
(temp file + rename locally; S3 PUT is atomic) and return the size and sha256 actually
written, which is what the artifact row records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

from scheduler import constants as C
from scheduler.errors import InvalidKey, NotFound, StoreError
from scheduler.settings import Settings

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=+-]{0,199}$")
T = TypeVar("T")
log = logging.getLogger(__name__)


def validate_key(key: str) -> str:
    """A key is '/'-separated safe segments: no '..', no absolute path, no empty segment, no odd characters."""
    if not key or len(key) > 1024 or key.startswith("/") or "\\" in key:
        raise InvalidKey(f"invalid object key: {key!r}")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or not _SEGMENT.match(seg):
            raise InvalidKey(f"invalid object key segment {seg!r} in {key!r}")
    return key


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None


class Store(Protocol):
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...
    def get_file(self, key: str, dest: Path) -> Path: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def promote(self, src: str, dst: str) -> bool: ...
    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str: ...
    def describe(self) -> str: ...


def _retry(fn: Callable[[], T], what: str, attempts: int = 5, base_delay: float = 0.5) -> T:
    """Retry transient store errors with exponential backoff; the last error becomes StoreError."""
    for i in range(attempts):
        try:
            return fn()
        except (NotFound, InvalidKey):
            raise
        except Exception as exc:  # network errors, 5xx, timeouts
            if i == attempts - 1:
                raise StoreError(f"{what} failed after {attempts} attempts: {exc}") from exc
            time.sleep(base_delay * (2**i))
    raise AssertionError("unreachable")


class LocalStore:
    """A folder with the same key layout as the bucket."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if self.root not in path.parents:
            raise InvalidKey(f"key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            digest = sha256_file(Path(tmp))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key, dest.stat().st_size, digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def get_file(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key!r} in the store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key!r} in the store")
        return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
                yield ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def promote(self, src: str, dst: str) -> bool:
        """Move a staged object to its key (atomic: a rename within the store's file system). Returns True:
        nothing of `src` is left behind."""
        source, dest = self._path(src), self._path(dst)
        if not source.is_file():
            raise NotFound(f"no object {src!r} in the store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return True

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return f"local folder {self.root}"


# minio's own client waits 5 minutes to connect or read and retries 5 times inside each of our
# `_retry` attempts: a dead S3 failed an upload after ~38 s, a silent one would hold the job for
# hours. Bounded timeouts, and the retry policy in one place (`_retry`).
S3_CONNECT_TIMEOUT_SECONDS = 10.0
S3_READ_TIMEOUT_SECONDS = 120.0


def _http_client():  # noqa: ANN202 (urllib3 is imported lazily, with minio)
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.util.Timeout(connect=S3_CONNECT_TIMEOUT_SECONDS, read=S3_READ_TIMEOUT_SECONDS),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",  # minio's default; only used with MEDGAN_S3_SECURE
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Store:
    """S3-compatible object storage (MinIO in production, moto in tests) through the minio client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 secure: bool = False, region: str | None = None):
        from minio import Minio  # imported here: the CLI's --help stays fast

        self.bucket = bucket
        self.endpoint = endpoint
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                            http_client=_http_client())
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                # Private by default: no bucket policy is set; downloads go through presigned URLs.
                self.client.make_bucket(self.bucket)

        _retry(make, f"creating bucket {self.bucket}")
        self._bucket_ready = True

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        validate_key(key)
        self._ensure_bucket()
        digest = sha256_file(path)
        size = path.stat().st_size

        def put() -> ObjectInfo:
            self.client.fput_object(
                self.bucket, key, str(path), part_size=C.UPLOAD_PART_SIZE, metadata={"sha256": digest}
            )
            stat = self.client.stat_object(self.bucket, key)
            if stat.size != size:  # an object row is written only for a complete object
                raise StoreError(f"uploaded {key} has {stat.size} bytes, expected {size}")
            return ObjectInfo(key, size, digest)

        return _retry(put, f"upload of {key}")

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        import io

        validate_key(key)
        self._ensure_bucket()
        digest = hashlib.sha256(data).hexdigest()

        def put() -> ObjectInfo:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), metadata={"sha256": digest})
            return ObjectInfo(key, len(data), digest)

        return _retry(put, f"upload of {key}")

    def _not_found(self, exc: Exception, key: str) -> None:
        from minio.error import S3Error

        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise NotFound(f"no object {key!r} in bucket {self.bucket}") from exc

    def get_file(self, key: str, dest: Path) -> Path:
        validate_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def get() -> Path:
            try:
                self.client.fget_object(self.bucket, key, str(dest))
            except Exception as exc:
                self._not_found(exc, key)
                raise
            return dest

        return _retry(get, f"download of {key}")

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)

        def get() -> bytes:
            try:
                resp = self.client.get_object(self.bucket, key)
            except Exception as exc:
                self._not_found(exc, key)
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return _retry(get, f"download of {key}")

    def exists(self, key: str) -> bool:
        validate_key(key)

        def stat() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
                return True
            except Exception as exc:
                try:
                    self._not_found(exc, key)
                except NotFound:
                    return False
                raise

        # Through _retry like every other call: an unreachable server is a StoreError, not urllib3's.
        return _retry(stat, f"lookup of {key}")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._ensure_bucket()

        def listing() -> list[ObjectInfo]:
            return [ObjectInfo(o.object_name, o.size or 0)
                    for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]

        yield from _retry(listing, f"listing of {prefix}")

    def delete(self, key: str) -> None:
        validate_key(key)
        _retry(lambda: self.client.remove_object(self.bucket, key), f"delete of {key}")

    def promote(self, src: str, dst: str) -> bool:
        """Move a staged object to its key: a server-side copy (atomic for the reader of `dst`), then delete.
        Once the copy is made the object is promoted: a failed delete of the staged copy (the server went
        away between the two calls) is only a leftover, never a failed upload. Returns False then."""
        from minio.commonconfig import CopySource

        validate_key(src)
        validate_key(dst)

        def copy() -> None:
            try:
                self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))
            except Exception as exc:
                self._not_found(exc, src)
                raise

        _retry(copy, f"upload of {dst}")  # the last step of an upload, as the user sees it
        try:
            self.delete(src)
        except StoreError as exc:
            log.warning("promoted %s but could not delete its staged copy %s: %s", dst, src, exc)
            return False
        return True

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        validate_key(key)
        return self.client.presigned_get_object(self.bucket, key, expires=expires)

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint}"


def make_store(settings: Settings) -> Store:
    """The store the settings name: S3 when MEDGAN_S3_ENDPOINT is set, else the local folder."""
    if settings.s3_endpoint:
        assert settings.s3_access_key and settings.s3_secret_key  # checked by Settings
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalStore(settings.local_store)
