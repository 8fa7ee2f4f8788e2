"""One contract for every storage backend, then what is particular to each.

S3 runs against LocalStack (a real server: KEYWARD_TEST_AWS_ENDPOINT).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from objects.storage import (
    FilesystemStorage,
    InvalidKey,
    ObjectMissing,
    ReadSizes,
    S3Storage,
    Storage,
    StorageDenied,
    StorageError,
    StoredObject,
    validate_key,
)
from tests.support.aws import REGION, boto_client, create_kms_key

MIB = 1024 * 1024
PART = 5 * MIB
PAGE = 7


def s3_bucket_name() -> str:
    return f"keyward-test-{uuid.uuid4().hex[:16]}"


def empty_and_remove(client: Any, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3() -> Any:
    return boto_client("s3")


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = s3_bucket_name()
    yield name
    if any(b["Name"] == name for b in s3.list_buckets().get("Buckets", [])):
        empty_and_remove(s3, name)


@pytest.fixture(params=["filesystem", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    store: Storage
    if request.param == "filesystem":
        store = FilesystemStorage(tmp_path / "objects")
    else:
        client = boto_client("s3")
        name = request.getfixturevalue("bucket")
        store = S3Storage(
            name, "tenants/acme", client=client, region=REGION, part_size=PART, page_size=PAGE
        )
    store.ensure()
    return store


def body(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def read(store: Storage, key: str) -> bytes:
    return b"".join(store.get(key))


def keys_of(objects: Iterator[StoredObject]) -> list[str]:
    return [o.key for o in objects]


# -- the contract ------------------------------------------------------------


def test_put_get_head_round_trip(storage: Storage) -> None:
    data = os.urandom(300_000)
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "dek-id": "42"}
    stored = storage.put("invoices/2024/0001.pdf", body(data, 7_000), metadata=meta)
    assert stored == StoredObject("invoices/2024/0001.pdf", len(data), meta)
    assert storage.head("invoices/2024/0001.pdf") == stored
    assert read(storage, "invoices/2024/0001.pdf") == data


def test_get_cuts_pieces_of_the_sizes_asked(storage: Storage) -> None:
    data = os.urandom(3 * MIB + 1_000)
    storage.put("sized", body(data, 1_000_003))
    storage.put("tiny", [b"abc"])
    storage.put("empty", [])

    def cut(key: str, sizes: ReadSizes | None, expected: list[int]) -> None:
        pieces = list(storage.get(key, sizes=sizes))
        got = [len(p) for p in pieces]
        if isinstance(storage, FilesystemStorage):
            assert got == expected
        else:
            # A network read may hand over less than it asked for: on S3 the
            # pieces add up, none larger than asked.
            first, rest = (sizes.first, sizes.rest) if sizes else (MIB, MIB)
            assert got[:1] <= [first] and all(n <= rest for n in got[1:])
        assert sum(got) == sum(expected)

    cut("sized", None, [MIB, MIB, MIB, 1_000])
    cut("sized", ReadSizes(1_049, 1_000_000), [1_049, *[1_000_000] * 3, len(data) - 3_001_049])
    cut("sized", ReadSizes(len(data) + 1, 1), [len(data)])
    cut("tiny", ReadSizes(2, 5), [2, 1])
    cut("empty", ReadSizes(2, 5), [])
    assert b"".join(storage.get("sized", sizes=ReadSizes(1_049, 1_000_000))) == data
    assert b"".join(storage.get("tiny", sizes=ReadSizes(2, 5))) == b"abc"


@pytest.mark.parametrize("first, rest", [(0, 1), (1, 0), (-5, 1), (1, 64 * MIB + 1)])
def test_read_sizes_out_of_range_are_refused(first: int, rest: int) -> None:
    with pytest.raises(ValueError, match="read size"):
        ReadSizes(first, rest)


def test_empty_object_and_odd_chunks(storage: Storage) -> None:
    assert storage.put("empty", []).size == 0
    assert storage.head("empty") == StoredObject("empty", 0, {})
    assert read(storage, "empty") == b""
    chunks: list[bytes] = [b"", bytes(bytearray(b"ab")), b"", b"c"]
    assert storage.put("odd", chunks).size == 3
    assert read(storage, "odd") == b"abc"


def test_multipart_sized_object(storage: Storage) -> None:
    data = os.urandom(2 * PART + 12_345)  # two full parts and a short last one on S3
    stored = storage.put("big/object", body(data, 1_000_003))
    assert stored.size == len(data)
    assert storage.head("big/object").size == len(data)
    got = hashlib.sha256()
    for chunk in storage.get("big/object"):
        got.update(chunk)
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()


def test_exactly_one_part(storage: Storage) -> None:
    data = os.urandom(PART)
    storage.put("one-part", body(data, MIB))
    assert read(storage, "one-part") == data


def test_overwrite_replaces_data_and_metadata(storage: Storage) -> None:
    storage.put("k", [b"old" * 1000], metadata={"v": "1"})
    storage.put("k", [b"new"], metadata={"v": "2"})
    assert storage.head("k") == StoredObject("k", 3, {"v": "2"})
    assert read(storage, "k") == b"new"
    storage.put("k", [b"newest"])
    assert storage.head("k").metadata == {}


def test_missing_object(storage: Storage) -> None:
    with pytest.raises(ObjectMissing):
        storage.head("nope")
    with pytest.raises(ObjectMissing):
        storage.get("nope")  # raised by the call, before any iteration
    assert isinstance(ObjectMissing("x"), StorageError)


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put("a/b", [b"x"])
    storage.delete("a/b")
    storage.delete("a/b")
    storage.delete("never/was")
    with pytest.raises(ObjectMissing):
        storage.head("a/b")
    assert list(storage.list()) == []


def test_list_is_sorted_and_filtered_by_prefix(storage: Storage) -> None:
    keys = ["b", "a/b/c", "a", "a-b", "a/b", "a/c.txt", "z" * 5, "a/b/d", "0"]
    for key in keys:
        storage.put(key, [key.encode()])
    assert keys_of(storage.list()) == sorted(keys)  # more than one page on S3
    assert keys_of(storage.list("a/")) == ["a/b", "a/b/c", "a/b/d", "a/c.txt"]
    assert keys_of(storage.list("a")) == ["a", "a-b", "a/b", "a/b/c", "a/b/d", "a/c.txt"]
    assert keys_of(storage.list("a/b")) == ["a/b", "a/b/c", "a/b/d"]
    assert keys_of(storage.list("q")) == []
    listed = {o.key: o for o in storage.list()}
    assert listed["a/b/c"] == StoredObject("a/b/c", 5, {})  # listings carry no metadata


def test_list_orders_non_ascii_keys_by_utf8(storage: Storage) -> None:
    # Fewer keys than a page: LocalStack 4.10 compares URL-quoted keys against
    # the raw continuation token (botocore always asks for EncodingType=url), so
    # a non-ASCII key right after a page break is skipped there; S3 is not.
    keys = ["é/x", "e", "z", "日本/語", "\U0001f600"]
    for key in keys:
        storage.put(key, [b"."])
    assert keys_of(storage.list()) == sorted(keys, key=lambda k: k.encode())
    assert keys_of(storage.list("é")) == ["é/x"]
    assert keys_of(storage.list("日本/")) == ["日本/語"]


def test_list_pages_through_many_objects(storage: Storage) -> None:
    keys = [f"many/{i:03d}" for i in range(3 * PAGE + 4)]
    for key in keys:
        storage.put(key, [b"."])
    storage.put("other", [b"."])
    assert keys_of(storage.list("many/")) == keys
    assert len(list(storage.list())) == len(keys) + 1


def test_long_segments(storage: Storage) -> None:
    key = "s" * 300 + "/" + "é" * 200 + "/" + "t" * 250
    assert len(key.encode()) <= 1024
    storage.put(key, [b"long"], metadata={"m": "1"})
    assert storage.head(key) == StoredObject(key, 4, {"m": "1"})
    assert read(storage, key) == b"long"
    assert keys_of(storage.list("s" * 300 + "/")) == [key]
    storage.delete(key)
    assert list(storage.list()) == []


def test_the_longest_key(storage: Storage) -> None:
    expected = 1024 if isinstance(storage, FilesystemStorage) else 1024 - len("tenants/acme/")
    assert storage.max_key_bytes == expected
    key = "k" * storage.max_key_bytes
    storage.put(key, [b"x"])
    assert keys_of(storage.list()) == [key]
    with pytest.raises(InvalidKey, match="bytes"):
        storage.put(key + "k", [b"x"])


BAD_KEYS = [
    "",
    "/absolute",
    "a//b",
    "trailing/",
    ".",
    "..",
    "./a",
    "a/./b",
    "a/../b",
    "../escape",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "tab\tkey",
    "del\x7f",
    "c1\x85",
    "x" * 1025,
    "é" * 513,  # 1026 bytes
    "lone\ud800surrogate",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_refuses_bad_keys(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.put(key, [b"x"])
    with pytest.raises(InvalidKey):
        storage.get(key)
    with pytest.raises(InvalidKey):
        storage.head(key)
    with pytest.raises(InvalidKey):
        storage.delete(key)
    assert list(storage.list()) == []


@pytest.mark.parametrize("key", ["a", "a/.b/..c/...", "é" * 512, "with space/and:colon", "x.dir"])
def test_accepts_good_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "metadata",
    [{"Upper": "x"}, {"ok": "naïve"}, {"ok": "line\nbreak"}, {"": "x"}, {"big": "x" * 3000}],
)
def test_refuses_metadata_s3_would_change(storage: Storage, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        storage.put("k", [b"x"], metadata=metadata)
    assert list(storage.list()) == []


def test_a_failing_body_leaves_the_old_object(storage: Storage) -> None:
    storage.put("k", [b"old"], metadata={"v": "1"})

    def broken(after: int) -> Iterator[bytes]:
        yield os.urandom(after)
        raise RuntimeError("client went away")

    for after in (10, 2 * PART + 1):  # a single put, and a multipart upload on S3
        with pytest.raises(RuntimeError, match="client went away"):
            storage.put("k", broken(after), metadata={"v": "2"})
        with pytest.raises(RuntimeError, match="client went away"):
            storage.put("fresh", broken(after))
        assert storage.head("k") == StoredObject("k", 3, {"v": "1"})
        assert read(storage, "k") == b"old"
        assert keys_of(storage.list()) == ["k"]


def test_ensure_is_idempotent(storage: Storage) -> None:
    storage.put("k", [b"x"])
    storage.ensure()
    storage.ensure()
    assert read(storage, "k") == b"x"


def test_location_describes_the_place(storage: Storage) -> None:
    assert storage.location.startswith(("filesystem /", "s3://"))
    assert storage.location in repr(storage)


# -- the filesystem ----------------------------------------------------------


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemStorage:
    store = FilesystemStorage(tmp_path / "objects")
    store.ensure()
    return store


def test_fs_files_stay_under_the_root_and_are_private(fs: FilesystemStorage) -> None:
    for key in ("a", "a/b", "..a/b..", "x.dir/y.obj", "s" * 300):
        fs.put(key, [b"x"])
    files = [p for p in fs.root.rglob("*") if p.is_file()]
    assert len(files) == 5
    assert all(fs.root in p.parents for p in files)
    assert all(p.stat().st_mode & 0o077 == 0 for p in files)
    assert (fs.root / "a.obj").is_file()
    assert (fs.root / "a.dir" / "b.obj").is_file()
    assert sorted(keys_of(fs.list())) == sorted(["a", "a/b", "..a/b..", "x.dir/y.obj", "s" * 300])


def test_fs_a_reader_keeps_the_version_it_opened(fs: FilesystemStorage) -> None:
    old = os.urandom(3 * MIB)
    fs.put("k", [old])
    reading = fs.get("k")
    first = next(reading)
    fs.put("k", [b"new"])
    assert first + b"".join(reading) == old
    assert read(fs, "k") == b"new"


def test_fs_overwrite_is_atomic_under_concurrent_readers(fs: FilesystemStorage) -> None:
    versions = [bytes([v]) * (2 * MIB + 17 * v) for v in range(1, 4)]
    fs.put("k", [versions[0]])
    seen: set[bytes] = set()
    problems: list[str] = []
    done = threading.Event()

    sizes = {str(v[0]): len(v) for v in versions}

    def reader() -> None:
        while not done.is_set():
            data = read(fs, "k")
            if data not in versions:
                problems.append(f"a torn read of {len(data)} bytes")
            seen.add(data[:1])
            head = fs.head("k")  # metadata and data change together
            if head.metadata and sizes[head.metadata["v"]] != head.size:
                problems.append(f"metadata {head.metadata} with {head.size} bytes")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(30):
            version = versions[round_ % len(versions)]
            fs.put("k", body(version, 100_000), metadata={"v": str(version[0])})
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert len(seen) >= 2
    assert not [p for p in fs.root.rglob("*.tmp")]


def test_fs_a_failed_write_leaves_no_temporary_file(fs: FilesystemStorage) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fs.put("a/b", broken())
    assert [p.name for p in fs.root.rglob("*") if p.is_file()] == []


def test_fs_listing_ignores_a_crashed_writers_temporary_file(fs: FilesystemStorage) -> None:
    fs.put("a/b", [b"x"])
    (fs.root / "a.dir" / ".c.obj.0123456789abcdef.tmp").write_bytes(b"half")
    (fs.root / "a.dir" / "stray.txt").write_bytes(b"?")
    assert keys_of(fs.list()) == ["a/b"]


def test_fs_delete_removes_empty_folders(fs: FilesystemStorage) -> None:
    fs.put("t/1/a", [b"x"])
    fs.put("t/2/b", [b"x"])
    fs.delete("t/1/a")
    assert not (fs.root / "t.dir" / "1.dir").exists()
    assert (fs.root / "t.dir" / "2.dir").is_dir()
    fs.delete("t/2/b")
    assert list(fs.root.iterdir()) == []
    fs.put("t/1/a", [b"again"])
    assert read(fs, "t/1/a") == b"again"


def test_fs_concurrent_put_and_delete_in_one_folder(fs: FilesystemStorage) -> None:
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for _ in range(200):
                fs.put(f"shared/{name}", [b"x"])
                fs.delete(f"shared/{name}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(n,)) for n in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_fs_without_ensure_says_so(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "not-yet")
    with pytest.raises(StorageError, match="ensure"):
        store.put("k", [b"x"])
    assert list(store.list()) == []


def test_fs_a_foreign_file_is_an_error_not_data(fs: FilesystemStorage) -> None:
    (fs.root / "k.obj").write_bytes(b"not ours")
    with pytest.raises(StorageError, match="not an object file"):
        fs.head("k")
    with pytest.raises(StorageError, match="not an object file"):
        fs.get("k")


# -- S3 ----------------------------------------------------------------------


def test_s3_sse_kms_default_bucket_encryption(s3: Any, bucket: str) -> None:
    key_arn = create_kms_key(description="tenant dedicated bucket")
    store = S3Storage(bucket, client=s3, region=REGION, sse_kms_key_id=key_arn, part_size=PART)
    store.ensure()
    store.ensure()

    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key_arn,
    }
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())

    small, large = os.urandom(1000), os.urandom(PART + 1)
    store.put("small", [small])
    store.put("large", body(large, MIB))
    for name, data in (("small", small), ("large", large)):
        head = s3.head_object(Bucket=bucket, Key=name)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_arn
        assert read(store, name) == data


def test_s3_bucket_default_applies_to_uploads_that_name_no_key(s3: Any, bucket: str) -> None:
    key_arn = create_kms_key()
    S3Storage(bucket, client=s3, region=REGION, sse_kms_key_id=key_arn).ensure()
    plain = S3Storage(bucket, client=s3, region=REGION)
    plain.put("k", [b"x"])
    head = s3.head_object(Bucket=bucket, Key="k")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)


def test_s3_metadata_is_x_amz_meta(s3: Any, bucket: str) -> None:
    storage = S3Storage(bucket, "tenants/acme", client=s3, region=REGION)
    storage.ensure()
    storage.put("k", [b"x"], metadata={"sha256": "ab" * 32})
    raw = s3.head_object(Bucket=bucket, Key="tenants/acme/k")
    assert raw["Metadata"] == {"sha256": "ab" * 32}
    assert raw["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-sha256"] == "ab" * 32


def test_s3_prefixes_keep_tenants_apart(s3: Any, bucket: str) -> None:
    acme = S3Storage(bucket, "tenants/acme", client=s3, region=REGION)
    globex = S3Storage(bucket, "tenants/globex/", client=s3, region=REGION)
    acme.ensure()
    acme.put("k", [b"acme"])
    globex.put("k", [b"globex"])
    assert acme.location == f"s3://{bucket}/tenants/acme/"
    assert read(acme, "k") == b"acme"
    assert read(globex, "k") == b"globex"
    assert keys_of(acme.list()) == ["k"]
    globex.delete("k")
    assert read(acme, "k") == b"acme"


def test_s3_aborts_the_multipart_upload_when_the_body_fails(s3: Any, bucket: str) -> None:
    store = S3Storage(bucket, client=s3, region=REGION, part_size=PART)
    store.ensure()

    def broken() -> Iterator[bytes]:
        yield os.urandom(2 * PART + 5)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.put("k", broken())
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(store.list()) == []


def test_s3_missing_bucket_is_an_error_not_a_missing_object(s3: Any) -> None:
    store = S3Storage(s3_bucket_name(), client=s3, region=REGION)
    with pytest.raises(StorageError, match="NoSuchBucket") as raised:
        store.get("k")
    assert not isinstance(raised.value, ObjectMissing)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put("k", [b"x"])
    with pytest.raises(StorageError, match="NoSuchBucket"):
        list(store.list())


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("KMS.DisabledException", 400, StorageDenied),
        ("KMS.KMSInvalidStateException", 400, StorageDenied),
        ("AccessDenied", 403, StorageDenied),
        ("SlowDown", 503, StorageError),
        ("InternalError", 500, StorageError),
        ("NoSuchKey", 404, ObjectMissing),
    ],
)
def test_s3_errors_are_mapped(code: str, status: int, expected: type[StorageError]) -> None:
    """Answers LocalStack does not give (it stores SSE-KMS settings without calling KMS,
    and never throttles), stubbed on a real client."""
    from botocore.stub import Stubber

    client = boto_client("s3")
    store = S3Storage("b", client=client, region=REGION)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", code, "refused", status)
        stub.add_client_error("put_object", code, "refused", status)
        with pytest.raises(expected) as raised:
            store.get("k")
        assert type(raised.value) is expected
        with pytest.raises(expected):
            store.put("k", [b"x"])


def test_s3_unreachable_endpoint_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "111122223333")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    store = S3Storage("b", endpoint_url="http://127.0.0.1:9", region=REGION)
    with pytest.raises(StorageError, match="EndpointConnectionError"):
        store.head("k")


def test_s3_builds_its_own_client(monkeypatch: pytest.MonkeyPatch, bucket: str) -> None:
    from tests.support.aws import aws_endpoint

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "111122223333")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    store = S3Storage(bucket, "p", endpoint_url=aws_endpoint(), region=REGION)
    store.ensure()
    store.put("k", [b"x"])
    assert store.head("k").size == 1


def test_s3_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Storage("b", client=object(), part_size=MIB)
    with pytest.raises(ValueError, match="page_size"):
        S3Storage("b", client=object(), page_size=5000)
    with pytest.raises(InvalidKey):
        S3Storage("b", "../up", client=object())
