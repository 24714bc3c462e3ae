"""Content-addressed blob storage in an S3-compatible bucket (boto3).

Keys: ``<prefix>blobs/<sha[:2]>/<sha[2:]>`` for blobs, ``<prefix>records/<name>``
for records. What keeps the store's guarantees on S3:

- **Atomic visibility.** An upload is a multipart upload straight to the content
  address; S3 shows an object only once ``CompleteMultipartUpload`` is called,
  and we call it only after the streamed bytes hashed to the address. A digest
  mismatch, a size over the limit, a client that hangs up or any error aborts the
  upload; a server killed mid-upload leaves an incomplete multipart upload,
  which is invisible (a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
  reclaims its parts, docs/deploy.md). Blobs smaller than one part are hashed in
  memory and written with one ``PutObject`` after the check.
- **Flat memory.** At most one part (``s3_part_mb``, 8 MiB by default) is held.
- **Dedup.** A HEAD first: when the address is taken, the upload is still read
  and hashed (a client must not be told "stored" for bytes that do not match)
  but not sent to the bucket.
- **Untrusted.** Devices check every byte against the signed manifest, so a
  tampered object is refused on the device; presigned URLs only save the server
  the egress.

boto3 is blocking: `put_stream` hops to threads for every call; the other methods
are called from threads by their callers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ferry.server.core.blobs import (
    READ_CHUNK_BYTES,
    BlobMissingError,
    BlobStore,
    PutResult,
    check_digest,
    check_record_name,
)
from ferry.server.core.errors import (
    DigestMismatchError,
    PayloadTooLargeError,
    StoreUnavailableError,
)
from ferry.server.core.settings import BlobSettings

log = logging.getLogger("ferry.server.blobs")
MIB = 1024 * 1024


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket, under an optional key prefix."""

    def __init__(self, settings: BlobSettings) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # the optional extra is not installed
            raise RuntimeError(
                "FERRY_BLOB_BACKEND=s3 needs boto3: pip install 'ferry-server[s3]'"
            ) from exc
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.part_bytes = settings.s3_part_mb * MIB
        endpoint = settings.s3_endpoint_url or None
        # S3-compatible servers (MinIO, moto) expect path-style keys; AWS prefers virtual hosts.
        style = {"addressing_style": "path" if endpoint else "virtual"}
        session = boto3.session.Session()

        def client(url: str | None, **options: Any) -> Any:
            config = Config(signature_version="s3v4", s3=style, **options)
            return session.client(
                "s3", endpoint_url=url, region_name=settings.s3_region, config=config
            )

        self.client = client(
            endpoint,
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
        )
        # /readyz must answer fast: one attempt, short timeouts.
        self._probe = client(
            endpoint, connect_timeout=2, read_timeout=3, retries={"max_attempts": 1}
        )
        presign_endpoint = settings.presign_endpoint_url or endpoint
        self._signer = self.client if presign_endpoint == endpoint else client(presign_endpoint)

    # --- keys -----------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        check_digest(sha256)
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:]}"

    def _record_key(self, name: str) -> str:
        return f"{self.prefix}records/{check_record_name(name)}"

    def describe(self) -> str:
        where = self.settings.s3_endpoint_url or "AWS"
        return f"s3 bucket {self.bucket!r} at {where} (prefix {self.prefix!r})"

    # --- reads ----------------------------------------------------------------------

    def size(self, sha256: str) -> int | None:
        from botocore.exceptions import ClientError

        with _translated("look up a blob"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        return int(head["ContentLength"])

    def read_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        if end is not None and end <= start:
            return
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with _translated("read a blob"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256), **extra)
            except ClientError as exc:
                if _status(exc) == 404:
                    raise BlobMissingError(sha256) from exc
                raise
        body = answer["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK_BYTES)
        finally:
            body.close()

    def presigned_url(self, sha256: str, expires_s: int) -> str | None:
        url: str = self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(sha256)},
            ExpiresIn=expires_s,
        )
        return url

    def get_record(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with _translated("read a record"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._record_key(name))
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            data: bytes = answer["Body"].read()
        return data

    def unavailable(self) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                return f"s3 bucket {self.bucket!r} does not exist"
            if status in (401, 403):
                return f"s3 refused the credentials for bucket {self.bucket!r} (HTTP {status})"
            return f"s3 answered HTTP {status} for bucket {self.bucket!r}"
        except BotoCoreError as exc:  # no route, no credentials, timeouts
            return f"s3 store unreachable: {exc}"
        return None

    # --- writes ---------------------------------------------------------------------

    def put_record(self, name: str, data: bytes) -> None:
        with _translated("write a record"):
            self.client.put_object(Bucket=self.bucket, Key=self._record_key(name), Body=data)

    def put_file(self, sha256: str, path: Path) -> PutResult:
        from boto3.s3.transfer import TransferConfig

        size = Path(path).stat().st_size
        if self.size(sha256) is not None:
            return PutResult(sha256=sha256, size=size, created=False)
        # Managed upload: multipart above the threshold, completed only once every part is in.
        config = TransferConfig(
            multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes
        )
        with _translated("store a file"):
            self.client.upload_file(str(path), self.bucket, self.key(sha256), Config=config)
        return PutResult(sha256=sha256, size=size, created=True)

    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PutResult:
        key = self.key(sha256)
        exists = await anyio.to_thread.run_sync(self.size, sha256) is not None
        upload = _Upload(self, key, dry=exists)
        try:
            with _translated("store an upload"):
                digest, size = await upload.feed(chunks, max_bytes)
            if digest != sha256:
                raise DigestMismatchError(
                    f"uploaded bytes hash to {digest}, not {sha256}; nothing was stored",
                    {"expected": sha256, "actual": digest, "size": size},
                )
            with _translated("store an upload"):
                await upload.complete()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await upload.abort()
            raise
        return PutResult(sha256=sha256, size=size, created=not exists)

    def close(self) -> None:
        for client in {id(c): c for c in (self.client, self._probe, self._signer)}.values():
            client.close()


class _Upload:
    """One streamed upload: a buffer of one part, a multipart upload opened on demand."""

    def __init__(self, store: S3BlobStore, key: str, *, dry: bool) -> None:
        self.store = store
        self.key = key
        self.dry = dry  # the address is taken: hash only, send nothing
        self.hasher = hashlib.sha256()
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def feed(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        size = 0
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(
                    f"upload exceeds the limit of {max_bytes} bytes", {"max_bytes": max_bytes}
                )
            self.buffer += chunk
            if len(self.buffer) >= self.store.part_bytes:
                part = bytes(self.buffer)
                self.buffer.clear()
                await anyio.to_thread.run_sync(self._send_part, part)
        if self.buffer:
            tail = bytes(self.buffer)
            if self.upload_id is not None or self.dry:
                self.buffer.clear()
                await anyio.to_thread.run_sync(self._send_part, tail)
            else:  # smaller than one part: kept for one PutObject once it is verified
                await anyio.to_thread.run_sync(self.hasher.update, tail)
        return self.hasher.hexdigest(), size

    def _send_part(self, part: bytes) -> None:
        self.hasher.update(part)
        if self.dry:
            return
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            created = client.create_multipart_upload(Bucket=bucket, Key=self.key)
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=part
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def complete(self) -> None:
        """Make the verified bytes visible at the content address (one call, atomic)."""
        if self.dry:
            return
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:  # smaller than one part: hashed in memory, one PUT
            body = bytes(self.buffer)
            self.buffer.clear()
            await anyio.to_thread.run_sync(
                lambda: client.put_object(Bucket=bucket, Key=self.key, Body=body)
            )
            return
        upload_id, parts = self.upload_id, self.parts
        await anyio.to_thread.run_sync(
            lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        )
        self.upload_id = None

    async def abort(self) -> None:
        if self.upload_id is None:
            return
        client, bucket, upload_id = self.store.client, self.store.bucket, self.upload_id
        self.upload_id = None
        try:
            await anyio.to_thread.run_sync(
                lambda: client.abort_multipart_upload(
                    Bucket=bucket, Key=self.key, UploadId=upload_id
                )
            )
        except Exception:  # noqa: BLE001  (the lifecycle rule reclaims it; the upload failed anyway)
            log.warning("could not abort a multipart upload", extra={"fields": {"key": self.key}})


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """S3 trouble becomes one 503 ``store_unavailable`` (logged once), never a 500."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        log.warning("s3 %s failed: %s", what, exc)
        raise StoreUnavailableError(
            f"the blob store failed to {what} (HTTP {_status(exc)}); retry shortly"
        ) from exc
    except BotoCoreError as exc:
        log.warning("s3 %s failed: %s", what, exc)
        raise StoreUnavailableError(
            f"the blob store is unreachable ({exc}); retry shortly"
        ) from exc


def _status(exc: Any) -> int:
    meta = exc.response.get("ResponseMetadata", {})
    code = exc.response.get("Error", {}).get("Code", "")
    if code in ("NoSuchKey", "404", "NotFound"):
        return 404
    return int(meta.get("HTTPStatusCode", 0))
