"""The object store: one S3 bucket reached through the official ``minio`` SDK.

Every method is synchronous and blocks on the network: call it from a worker thread
(``asyncio.to_thread``), never on the event loop. Only the S3 API is used, so any S3 server
works (MinIO in production, moto's server in tests).

Errors are translated into a small hierarchy: ``StoreUnavailable`` when the server cannot be
reached or answers 5xx after retries, ``ObjectMissing`` for a missing key, ``StoreError`` for the
rest. Memory stays bounded: uploads hold at most one part (``part_size``, 5 MiB by default, the
S3 minimum) and downloads are streamed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

import urllib3
import urllib3.exceptions
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE

from gateway.error_codes import ErrorCode

_META_PREFIX = "x-amz-meta-"
_DELETE_BATCH = 1000  # the S3 DeleteObjects maximum
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion"})
_UNAVAILABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "XMinioServerNotInitialized"})


class StoreError(Exception):
    """The object store refused or failed an operation."""

    code: ErrorCode = ErrorCode.STORE_ERROR


class StoreUnavailable(StoreError):
    """The object store cannot be reached (refused, timed out, 5xx after retries)."""

    code = ErrorCode.STORE_UNAVAILABLE


class ObjectMissing(StoreError):
    """The key (or the bucket) does not exist."""

    code = ErrorCode.OBJECT_MISSING


class Source(Protocol):
    """What ``put_stream`` reads: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, size: int, /) -> bytes: ...


class Readable(Protocol):
    """What ``ObjectStore.open`` yields: ``read(n)`` returns at most ``n`` bytes, ``b""`` at
    the end."""

    def read(self, amt: int | None = None, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """User metadata (``x-amz-meta-*`` without the prefix, lower case); filled by ``stat``
    only."""

    @property
    def is_dir_marker(self) -> bool:
        return self.key.endswith("/")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING_CODES or exc.code == "NoSuchBucket":
            raise ObjectMissing(f"{what}: {exc.code}: {exc.message}") from exc
        if exc.code in _UNAVAILABLE_CODES:
            raise StoreUnavailable(f"{what}: {exc.code}: {exc.message}") from exc
        raise StoreError(f"{what}: {exc.code}: {exc.message}") from exc
    except ServerError as exc:
        raise StoreUnavailable(f"{what}: server error {exc.status_code}") from exc
    except MinioException as exc:
        raise StoreError(f"{what}: {exc}") from exc
    except (
        urllib3.exceptions.HTTPError,  # MaxRetryError, timeouts, protocol errors
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
    ) as exc:
        raise StoreUnavailable(f"{what}: object store unreachable: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class ObjectStore:
    """One bucket. Thread-safe (the SDK's connection pool is shared); create one per process
    in the lifespan and ``close`` it there."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = True,
        region: str | None = None,
        *,
        part_size: int = MIN_PART_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        retries: int = 3,
        pool_size: int = 16,
        ca_file: str | None = None,
    ) -> None:
        """``endpoint`` is ``host:port`` (no scheme: ``secure`` chooses https). Without
        ``region`` the SDK asks the bucket's location once (GetBucketLocation) and caches it.
        ``ca_file`` is the CA bundle trusted for https instead of the system's trust store
        (for a MinIO behind a private CA)."""
        if "://" in endpoint:
            raise ValueError(f"endpoint {endpoint!r} must be host:port, without a scheme")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (the S3 minimum)")
        self.bucket = bucket
        self.region = region
        self._part_size = part_size
        # Our own pool: the SDK's default waits 5 minutes to connect and retries 5 times,
        # which makes a dead server look like a hang.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    # -- bucket --------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Idempotent (a concurrent creator is fine)."""
        with _translated(f"create bucket {self.bucket}"):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self.region)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the server answers, ``ObjectMissing`` if it
        answers but the bucket does not exist."""
        with _translated("ping"):
            exists = self._client.bucket_exists(self.bucket)
        if not exists:
            raise ObjectMissing(f"bucket {self.bucket} does not exist")

    def close(self) -> None:
        """Drop pooled connections."""
        self._http.clear()

    # -- objects -------------------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        stream: Source,
        length: int,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Upload exactly ``length`` bytes read from ``stream``; returns the ETag. Parts are
        uploaded one at a time, so at most one part is held in memory. A short stream raises
        ``StoreError`` and leaves no object (the multipart upload is aborted)."""
        try:
            with _translated(f"put {key}"):
                try:
                    result = self._client.put_object(
                        self.bucket,
                        key,
                        cast(BinaryIO, _GuardedSource(stream)),
                        length,
                        content_type=content_type,
                        metadata=dict(metadata) if metadata else None,
                        part_size=self._part_size,
                        num_parallel_uploads=1,  # parallel parts would queue unbounded memory
                    )
                except OSError as exc:
                    # The SDK raises a bare OSError when the stream ends early; network
                    # errors (subclasses) go on to the translation.
                    if type(exc) is not OSError:
                        raise
                    raise StoreError(f"put {key}: {exc}") from exc
        except _SourceFailed as exc:
            # Reading ``stream`` failed (e.g. the container's tar broke): that is the
            # caller's error, not the store's, so it must not turn into StoreUnavailable.
            raise exc.original from None
        return str(result.etag or "")

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> str:
        """Upload a small object held in memory (markers, small documents)."""
        return self.put_stream(key, io.BytesIO(data), len(data), content_type=content_type)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[Readable]:
        """Stream an object: yields a file-like whose ``read(n)`` fetches from the network as
        it goes. The connection is released on exit, read to the end or not."""
        with _translated(f"get {key}"):
            response = self._client.get_object(self.bucket, key)
        try:
            yield _TranslatingReader(response, key)
        finally:
            response.close()
            response.release_conn()

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> None:
        """Server-side copy (no bytes pass through the gateway). With ``metadata`` the copy
        gets exactly that user metadata, else it keeps the source's. ``ObjectMissing`` when
        ``src`` does not exist. Objects over 5 GiB are copied part by part by the SDK."""
        with _translated(f"copy {src} -> {dst}"):
            if metadata:
                self._client.copy_object(
                    self.bucket,
                    dst,
                    CopySource(self.bucket, src),
                    metadata=dict(metadata),
                    metadata_directive=REPLACE,
                )
            else:
                self._client.copy_object(self.bucket, dst, CopySource(self.bucket, src))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` in batches of 1000; a missing key is not an error. Returns how many
        keys were asked for; raises ``StoreError`` naming the keys that failed."""
        count = 0

        def requests() -> Iterator[DeleteObject]:
            nonlocal count
            for key in keys:
                count += 1
                yield DeleteObject(key)

        with _translated("delete objects"):
            # remove_objects is lazy: nothing is deleted until its result is iterated.
            failures = [
                f"{error.name}: {error.code}"
                for error in self._client.remove_objects(self.bucket, requests())
            ]
        if failures:
            shown = ", ".join(failures[:5])
            raise StoreError(f"{len(failures)} object(s) could not be deleted: {shown}")
        return count

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (which must be a non-empty
        folder, ending in ``/``); returns how many there were."""
        if not prefix or not prefix.endswith("/") or prefix == "/":
            raise ValueError(f"refusing to delete prefix {prefix!r}")
        return self.delete_many(info.key for info in self.list(prefix))

    def list(self, prefix: str, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects below ``prefix`` in key order (directory markers included). Not recursive:
        common prefixes come back as entries whose key ends in ``/`` and size 0."""
        with _translated(f"list {prefix}"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=recursive):
                yield ObjectInfo(
                    key=str(obj.object_name),
                    size=int(obj.size or 0),
                    etag=str(obj.etag or ""),
                    last_modified=obj.last_modified,
                )

    def stat(self, key: str) -> ObjectInfo:
        """Size, ETag, date and user metadata of ``key``; ``ObjectMissing`` if absent."""
        with _translated(f"stat {key}"):
            obj = self._client.stat_object(self.bucket, key)
        metadata = {
            name.lower()[len(_META_PREFIX) :]: value
            for name, value in (obj.metadata or {}).items()
            if name.lower().startswith(_META_PREFIX)
        }
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            etag=str(obj.etag or ""),
            last_modified=obj.last_modified,
            metadata=metadata,
        )

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectMissing:
            return False
        return True


class _SourceFailed(Exception):
    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _GuardedSource:
    """Marks exceptions raised while reading the caller's stream as the caller's."""

    def __init__(self, stream: Source) -> None:
        self._stream = stream

    def read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as exc:
            raise _SourceFailed(exc) from exc


class _TranslatingReader:
    """The SDK's response, with network failures mid-body turned into ``StoreUnavailable``."""

    def __init__(self, response: urllib3.BaseHTTPResponse, key: str) -> None:
        self._response = response
        self._key = key

    def read(self, amt: int | None = None, /) -> bytes:
        with _translated(f"read {self._key}"):
            if amt is not None and amt < 0:
                amt = None
            return self._response.read(amt)
