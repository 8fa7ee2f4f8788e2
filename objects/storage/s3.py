"""Objects in an S3 bucket, through boto3: the shared location (a tenant prefix) or a
BYOK tenant's own bucket, whose default encryption is SSE-KMS under the customer's key.

- Small objects (less than one part) go up in one PutObject; larger ones as a
  multipart upload of `part_size` parts, aborted when anything fails, so no
  orphaned parts are billed and readers never see a partial object (S3 makes
  an object visible only when PutObject or CompleteMultipartUpload succeeds).
  Memory: one part, plus one incoming chunk.
- With `sse_kms_key_id`, ensure() sets the bucket's default encryption to
  aws:kms with that key and every upload names it too, so an object is never
  stored under another key even if the bucket setting changes behind our back.
- Metadata is sent as x-amz-meta-* headers.
- Errors: a missing key is ObjectMissing; access denied and a KMS key that is
  disabled, pending deletion or gone are StorageDenied; throttling, 5xx and
  network failures (after botocore's own "standard" retries) are StorageError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import boto3.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from objects.storage.base import (
    DEFAULT_READS,
    MAX_KEY_BYTES,
    ObjectMissing,
    ReadSizes,
    Storage,
    StorageDenied,
    StorageError,
    StoredObject,
    validate_key,
    validate_metadata,
    validate_prefix,
)

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
MAX_PARTS = 10_000
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccountProblem",
    "InvalidObjectState",
}


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any | None = None,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        sse_kms_key_id: str | None = None,
        part_size: int = 8 * MIB,
        page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("a bucket name is required")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size is 1 to 1000 keys")
        if prefix:
            prefix = prefix.rstrip("/")
            validate_key(prefix, MAX_KEY_BYTES // 2)  # leave keys room
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.sse_kms_key_id = sse_kms_key_id
        self.part_size = part_size
        self.page_size = page_size
        if client is None:
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(
                    retries={"mode": "standard", "max_attempts": 4},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )
        self.client = client
        self.region = str(getattr(getattr(client, "meta", None), "region_name", None) or region)
        self.location = f"s3://{bucket}/{prefix}"
        self.max_key_bytes = MAX_KEY_BYTES - len(prefix.encode())  # S3 counts the prefix

    # -- the interface ----------------------------------------------------

    def put(
        self, key: str, chunks: Iterable[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        self.check_key(key)
        meta = validate_metadata(metadata)
        name = self.prefix + key
        common = {"Bucket": self.bucket, "Key": name, "Metadata": meta, **self._sse()}
        part_size = self.part_size
        pending: list[bytes] = []
        buffered = 0
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                pending.append(bytes(chunk))
                buffered += len(chunk)
                size += len(chunk)
                while buffered >= part_size:
                    joined = b"".join(pending)
                    body, rest = joined[:part_size], joined[part_size:]
                    pending, buffered = ([rest] if rest else []), len(rest)
                    if upload_id is None:
                        started = self.client.create_multipart_upload(
                            ChecksumAlgorithm="CRC32", **common
                        )
                        upload_id = str(started["UploadId"])
                    parts.append(self._upload_part(name, upload_id, len(parts) + 1, body))
            body = b"".join(pending)
            pending = []
            if upload_id is None:
                self.client.put_object(Body=body, **common)
            else:
                if body:
                    parts.append(self._upload_part(name, upload_id, len(parts) + 1, body))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException as error:
            if upload_id is not None:
                with contextlib.suppress(BotoCoreError, ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
            if isinstance(error, (BotoCoreError, ClientError)):
                raise _mapped(error, self._where(key)) from error
            raise
        return StoredObject(key=key, size=size, metadata=meta)

    def get(self, key: str, *, sizes: ReadSizes | None = None) -> Iterator[bytes]:
        self.check_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as error:
            raise _mapped(error, self._where(key)) from error
        return _stream(response["Body"], self._where(key), sizes or DEFAULT_READS)

    def head(self, key: str) -> StoredObject:
        self.check_key(key)
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as error:
            raise _mapped(error, self._where(key)) from error
        return StoredObject(
            key=key,
            size=int(response["ContentLength"]),
            metadata=dict(response.get("Metadata") or {}),
        )

    def delete(self, key: str) -> None:
        self.check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as error:
            mapped = _mapped(error, self._where(key))
            if not isinstance(mapped, ObjectMissing):
                raise mapped from error

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        validate_prefix(prefix, self.max_key_bytes)
        return self._list(prefix)

    def ensure(self) -> None:
        client, bucket = self.client, self.bucket
        try:
            try:
                if self.region == "us-east-1":
                    client.create_bucket(Bucket=bucket)
                else:
                    client.create_bucket(
                        Bucket=bucket,
                        CreateBucketConfiguration={"LocationConstraint": self.region},
                    )
            except ClientError as error:
                code = _code(error)
                if code == "BucketAlreadyExists":
                    raise StorageDenied(f"bucket {bucket!r} belongs to another account") from None
                if code != "BucketAlreadyOwnedByYou":
                    raise
            client.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            if self.sse_kms_key_id:
                client.put_bucket_encryption(
                    Bucket=bucket,
                    ServerSideEncryptionConfiguration={
                        "Rules": [
                            {
                                "ApplyServerSideEncryptionByDefault": {
                                    "SSEAlgorithm": "aws:kms",
                                    "KMSMasterKeyID": self.sse_kms_key_id,
                                },
                                "BucketKeyEnabled": True,
                            }
                        ]
                    },
                )
        except (BotoCoreError, ClientError) as error:
            raise _mapped(error, self.location) from error

    # -- helpers ----------------------------------------------------------

    def _sse(self) -> dict[str, str]:
        if not self.sse_kms_key_id:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_id}

    def _upload_part(self, name: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        if number > MAX_PARTS:
            raise StorageError(f"object too large for {MAX_PARTS} parts of {self.part_size} bytes")
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        return {
            "PartNumber": number,
            "ETag": response["ETag"],
            "ChecksumCRC32": response["ChecksumCRC32"],
        }

    def _list(self, prefix: str) -> Iterator[StoredObject]:
        strip = len(self.prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield StoredObject(key=item["Key"][strip:], size=int(item["Size"]), metadata={})
        except (BotoCoreError, ClientError) as error:
            raise _mapped(error, f"{self.location}{prefix}") from error

    def _where(self, key: str) -> str:
        return f"{self.location}{key}"


def _stream(body: Any, where: str, sizes: ReadSizes) -> Iterator[bytes]:
    try:
        first = body.read(sizes.first)
        if first:
            yield first
            yield from body.iter_chunks(sizes.rest)
    except (BotoCoreError, ClientError) as error:
        raise _mapped(error, where) from error
    finally:
        body.close()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _mapped(error: BotoCoreError | ClientError, where: str) -> StorageError:
    if isinstance(error, ClientError):
        code = _code(error)
        message = error.response.get("Error", {}).get("Message", "") or code
        if code in _MISSING:
            return ObjectMissing(f"no object at {where}")
        if code in _DENIED or code.startswith("KMS.") or code.startswith("KMS"):
            return StorageDenied(f"{where}: {code}: {message}")
        return StorageError(f"{where}: {code}: {message}")
    return StorageError(f"{where}: {type(error).__name__}: {error}")
