"""The vendor-managed KEK (keys.providers.local): a real key file under tmp_path."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.providers.base import KeyMaterialInvalid, KeyUnavailable, all_required_passed
from keys.providers.local import FILE_FORMAT, LocalProvider, RootKeyFile, RootKeyFileError

CONTEXT = {
    "keyward:tenant": "6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90",
    "keyward:purpose": "dek",
    "keyward:dek": "1",
}


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "root-keys.json"


def provider_at(path: Path) -> LocalProvider:
    root_keys = RootKeyFile(path)
    root_keys.ensure()
    return LocalProvider(root_keys)


def file_keys(path: Path) -> list[bytes]:
    return [base64.b64decode(k) for k in json.loads(path.read_text())["keys"].values()]


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def document(keys: dict[str, bytes], current: int = 1) -> str:
    return json.dumps(
        {
            "format": FILE_FORMAT,
            "current": current,
            "keys": {v: base64.b64encode(k).decode() for v, k in keys.items()},
        }
    )


# -- the file -------------------------------------------------------------------


def test_ensure_creates_the_file_owner_only(key_path):
    RootKeyFile(key_path).ensure()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    content = json.loads(key_path.read_text())
    assert content["format"] == FILE_FORMAT
    assert content["current"] == 1
    assert [len(k) for k in file_keys(key_path)] == [32]
    assert not [p for p in key_path.parent.iterdir() if p.name.startswith(".root-keys-")]


def test_ensure_keeps_an_existing_file(key_path):
    first = provider_at(key_path)
    wrapped = first.wrap(b"k" * 32, CONTEXT)
    before = key_path.read_bytes()
    again = provider_at(key_path)
    assert key_path.read_bytes() == before
    assert again.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"k" * 32


def test_missing_file_makes_the_provider_unavailable(key_path):
    provider = LocalProvider(RootKeyFile(key_path))
    with pytest.raises(KeyUnavailable, match=str(key_path)):
        provider.wrap(os.urandom(32), CONTEXT)
    results = provider.run_checks(CONTEXT)
    assert not all_required_passed(results)
    assert str(key_path) in results[0].message


CORRUPT = {
    "bad json": "{not json",
    "json list": "[1, 2]",
    "wrong format": json.dumps({"format": "other/1", "current": 1, "keys": {}}),
    "no keys": json.dumps({"format": FILE_FORMAT, "current": 1}),
    "bad base64": json.dumps({"format": FILE_FORMAT, "current": 1, "keys": {"1": "!!!"}}),
    "bad version": json.dumps({"format": FILE_FORMAT, "current": 1, "keys": {"x": "AAAA"}}),
    "16-byte key": document({"1": bytes(range(16))}),
    "current missing": document({"1": bytes(range(32))}, current=2),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_raises_naming_the_path(key_path, case):
    write_file(key_path, CORRUPT[case])
    with pytest.raises(RootKeyFileError) as exc:
        RootKeyFile(key_path).ensure()
    message = str(exc.value)
    assert str(key_path) in message
    assert "corrupt" in message
    for secret in (bytes(range(16)), bytes(range(32))):
        assert base64.b64encode(secret).decode() not in message
        assert secret.hex() not in message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused(key_path, mode):
    RootKeyFile(key_path).ensure()
    key_path.chmod(mode)
    with pytest.raises(RootKeyFileError) as exc:
        RootKeyFile(key_path).ensure()
    message = str(exc.value)
    assert str(key_path) in message
    assert f"chmod 600 {key_path}" in message
    provider = LocalProvider(RootKeyFile(key_path))
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        provider.wrap(os.urandom(32), CONTEXT)
    assert not all_required_passed(provider.run_checks(CONTEXT))


# -- wrap and unwrap ------------------------------------------------------------


def test_wrap_unwrap_round_trip(key_path):
    provider = provider_at(key_path)
    dek = AESGCM.generate_key(256)
    wrapped = provider.wrap(dek, CONTEXT)
    assert wrapped.version == "root-1" == provider.current_version()
    assert wrapped.blob[:4] == (1).to_bytes(4, "big")
    assert provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == dek
    # The context is a mapping: order does not matter.
    reordered = dict(reversed(list(CONTEXT.items())))
    assert provider.unwrap(wrapped.blob, reordered, wrapped.version) == dek


def test_wrapped_blob_never_contains_the_dek(key_path):
    provider = provider_at(key_path)
    dek = AESGCM.generate_key(256)
    blobs = [provider.wrap(dek, CONTEXT).blob for _ in range(20)]
    assert len(set(blobs)) == 20  # a fresh nonce each time
    for blob in blobs:
        assert dek not in blob
        assert dek.hex().encode() not in blob
        assert not any(dek[i : i + 8] in blob for i in range(0, 25))


OTHER_CONTEXTS = {
    "other tenant": {**CONTEXT, "keyward:tenant": "0c2d9d4e-1111-4b0e-9a47-3f0e5c1d2a90"},
    "other dek": {**CONTEXT, "keyward:dek": "2"},
    "extra entry": {**CONTEXT, "extra": ""},
    "missing entry": {k: v for k, v in CONTEXT.items() if k != "keyward:dek"},
    "empty": {},
    "moved boundary": {"keyward:tenan": "t" + CONTEXT["keyward:tenant"]},
}


@pytest.mark.parametrize("case", sorted(OTHER_CONTEXTS))
def test_unwrap_under_another_context_fails(key_path, case):
    provider = provider_at(key_path)
    dek = AESGCM.generate_key(256)
    wrapped = provider.wrap(dek, CONTEXT)
    with pytest.raises(KeyMaterialInvalid) as exc:
        provider.unwrap(wrapped.blob, OTHER_CONTEXTS[case], wrapped.version)
    assert dek.hex() not in str(exc.value)


def test_tampered_or_mislabelled_wrapped_key_fails(key_path):
    provider = provider_at(key_path)
    wrapped = provider.wrap(AESGCM.generate_key(256), CONTEXT)
    for index in range(len(wrapped.blob)):
        tampered = bytearray(wrapped.blob)
        tampered[index] ^= 0x01
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(bytes(tampered), CONTEXT, wrapped.version)
    for bad in (wrapped.blob[:31], b""):
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(bad, CONTEXT, wrapped.version)
    for label in ("root-2", "root-x", "kms-1", "1", ""):
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(wrapped.blob, CONTEXT, label)


def test_another_root_key_file_cannot_unwrap(tmp_path):
    one, two = provider_at(tmp_path / "one.json"), provider_at(tmp_path / "two.json")
    wrapped = one.wrap(AESGCM.generate_key(256), CONTEXT)
    with pytest.raises(KeyMaterialInvalid):
        two.unwrap(wrapped.blob, CONTEXT, wrapped.version)


# -- rotation -------------------------------------------------------------------


def test_rotate_adds_a_version_new_wraps_use_it_old_wraps_still_unwrap(key_path):
    provider = provider_at(key_path)
    old_dek, new_dek = AESGCM.generate_key(256), AESGCM.generate_key(256)
    old = provider.wrap(old_dek, CONTEXT)
    assert provider.root_keys.rotate() == 2
    new = provider.wrap(new_dek, CONTEXT)
    assert (old.version, new.version) == ("root-1", "root-2")
    assert new.blob[:4] == (2).to_bytes(4, "big")
    assert provider.current_version() == "root-2"
    assert provider.root_keys.versions() == [1, 2]
    assert provider.describe().facts == {"Root key version": "root-2"}
    assert provider.unwrap(old.blob, CONTEXT, old.version) == old_dek
    assert provider.unwrap(new.blob, CONTEXT, new.version) == new_dek
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(file_keys(key_path)) == 2


def rotate_keeping_mtime(root_keys: RootKeyFile) -> None:
    """Rotate, then put the old mtime back: as if it happened within one mtime tick."""
    before = root_keys.path.stat().st_mtime_ns
    root_keys.rotate()
    os.utime(root_keys.path, ns=(before, before))
    assert root_keys.path.stat().st_mtime_ns == before


def test_another_instance_sees_the_rotation_when_wrapping(key_path):
    a, b = provider_at(key_path), provider_at(key_path)
    assert b.current_version() == "root-1"
    rotate_keeping_mtime(a.root_keys)
    wrapped = b.wrap(b"d" * 32, CONTEXT)
    assert wrapped.version == "root-2"
    assert b.current_version() == "root-2"
    assert a.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"d" * 32


def test_another_instance_unwraps_a_version_it_has_not_loaded(key_path):
    a, b = provider_at(key_path), provider_at(key_path)
    rotate_keeping_mtime(a.root_keys)
    wrapped = a.wrap(b"d" * 32, CONTEXT)
    assert wrapped.version == "root-2"
    assert b.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"d" * 32


def test_concurrent_rotations_from_two_instances_get_distinct_versions(key_path: Path) -> None:
    provider_at(key_path)
    instances = [RootKeyFile(key_path) for _ in range(4)]
    barrier = threading.Barrier(len(instances))
    got: list[int] = []

    def rotate(root_keys: RootKeyFile) -> None:
        barrier.wait()
        got.append(root_keys.rotate())

    threads = [threading.Thread(target=rotate, args=(r,)) for r in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    assert sorted(got) == [2, 3, 4, 5]
    assert RootKeyFile(key_path).versions() == [1, 2, 3, 4, 5]


# -- checks, description, repr --------------------------------------------------


def test_run_checks_and_describe(key_path):
    provider = provider_at(key_path)
    results = provider.run_checks(CONTEXT)
    assert all_required_passed(results)
    assert [r.name for r in results] == ["Root key file", "Wrap and unwrap"]
    description = provider.describe()
    assert description.kind == "local"
    assert description.facts == {"Root key version": "root-1"}


def test_repr_never_contains_key_bytes(key_path):
    provider = provider_at(key_path)
    provider.root_keys.rotate()
    dek = AESGCM.generate_key(256)
    wrapped = provider.wrap(dek, CONTEXT)
    texts = [repr(provider), str(provider), repr(provider.root_keys), repr(wrapped)]
    texts.append(repr(provider.describe()))
    secrets = [dek, wrapped.blob, *file_keys(key_path)]
    for text in texts:
        for secret in secrets:
            for form in (repr(secret), secret.hex(), base64.b64encode(secret).decode()):
                assert form not in text
    assert repr(provider.root_keys) == f"RootKeyFile({str(key_path)!r}, versions=[1, 2])"
