"""The customer-uploaded KEK (keys.providers.uploaded): material from a callable, no database."""

from __future__ import annotations

import base64
import secrets

import pytest

from crypto.importkit import check_key_material, key_check_value
from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyProviderError,
    KeyUnavailable,
    all_required_passed,
)
from keys.providers.uploaded import MaterialDestroyed, MaterialUnavailable, UploadedKeyProvider

CONTEXT = {
    "keyward:tenant": "6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90",
    "keyward:purpose": "dek",
    "keyward:dek": "1",
}
RESTORE_HINT = "upload the same key again to restore"


def random_key() -> bytes:
    key = secrets.token_bytes(32)
    check_key_material(key)
    return key


class Store:
    """Stands in for the database: uploaded key copies by version; counts reads."""

    def __init__(self, **keys: bytes) -> None:
        self.keys = {label.replace("_", "-"): key for label, key in keys.items()}
        self.reads = 0
        self.destroyed: set[str] = set()
        self.down = False

    def material(self, version: str) -> bytes:
        self.reads += 1
        if self.down:
            raise MaterialUnavailable("database is not reachable")
        if version in self.destroyed:
            raise MaterialDestroyed(version)
        return self.keys[version]  # KeyError when never uploaded or deleted


@pytest.fixture
def key() -> bytes:
    return random_key()


@pytest.fixture
def store(key: bytes) -> Store:
    return Store(upload_1=key)


@pytest.fixture
def provider(store: Store) -> UploadedKeyProvider:
    return UploadedKeyProvider(store.material, "upload-1")


def leaks(text: str, key: bytes) -> bool:
    forms = [
        key.decode("latin-1"),
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        repr(key),
    ]
    return any(form in text for form in forms)


# -- wrapping ------------------------------------------------------------------------


def test_round_trip(provider):
    dek = secrets.token_bytes(32)
    wrapped = provider.wrap(dek, CONTEXT)
    assert wrapped.version == "upload-1" == provider.current_version()
    assert wrapped.blob.startswith(b"\x08upload-1")
    assert len(wrapped.blob) == 1 + 8 + 12 + 32 + 16
    assert dek not in wrapped.blob
    assert provider.unwrap(wrapped.blob, CONTEXT, "upload-1") == dek
    assert provider.kind == "uploaded"


def test_wraps_are_randomised(provider):
    dek = secrets.token_bytes(32)
    assert provider.wrap(dek, CONTEXT).blob != provider.wrap(dek, CONTEXT).blob


def test_another_context_is_refused(provider):
    wrapped = provider.wrap(secrets.token_bytes(32), CONTEXT)
    for other in (
        {**CONTEXT, "keyward:tenant": "0b8e2f4a-1111-4c2d-8e9f-222222222222"},
        {**CONTEXT, "keyward:dek": "2"},
        {k: v for k, v in CONTEXT.items() if k != "keyward:dek"},
        {},
    ):
        with pytest.raises(KeyMaterialInvalid, match="does not authenticate"):
            provider.unwrap(wrapped.blob, other, "upload-1")


def test_tampered_blobs_are_refused(provider):
    blob = provider.wrap(secrets.token_bytes(32), CONTEXT).blob
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(bytes(tampered), CONTEXT, "upload-1")
    for damaged in (b"", blob[:20], blob[:-1]):
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(damaged, CONTEXT, "upload-1")


def test_blob_must_name_the_version_it_is_unwrapped_with(key):
    store = Store(upload_1=key, upload_2=key)  # even with the same key material
    provider = UploadedKeyProvider(store.material, "upload-1")
    blob = provider.wrap(secrets.token_bytes(32), CONTEXT).blob
    with pytest.raises(KeyMaterialInvalid, match="another uploaded key version"):
        provider.unwrap(blob, CONTEXT, "upload-2")
    relabelled = b"\x08upload-2" + blob[9:]
    with pytest.raises(KeyMaterialInvalid, match="does not authenticate"):
        provider.unwrap(relabelled, CONTEXT, "upload-2")


def test_bad_version_labels_are_refused(store):
    for label in ("", "x" * 65, "upload-1\n"):
        with pytest.raises(KeyMaterialInvalid):
            UploadedKeyProvider(store.material, label)
    provider = UploadedKeyProvider(store.material, "upload-1")
    with pytest.raises(KeyMaterialInvalid):
        provider.unwrap(b"\x00" * 64, CONTEXT, "")


# -- destroyed material (revoke) and restore -----------------------------------------


def test_destroyed_material_denies_access_with_the_restore_hint(provider, store, key):
    dek = secrets.token_bytes(32)
    wrapped = provider.wrap(dek, CONTEXT)

    del store.keys["upload-1"]  # the caller's lookup raises KeyError
    with pytest.raises(KeyAccessDenied) as caught:
        provider.unwrap(wrapped.blob, CONTEXT, "upload-1")
    message = str(caught.value)
    assert "destroyed (revoked)" in message and RESTORE_HINT in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(KeyAccessDenied, match=RESTORE_HINT):
        provider.wrap(dek, CONTEXT)

    # Uploading the same key again restores access to what was wrapped before.
    store.keys["upload-1"] = key
    assert provider.unwrap(wrapped.blob, CONTEXT, "upload-1") == dek


def test_material_destroyed_exception_denies_access(provider, store):
    wrapped = provider.wrap(secrets.token_bytes(32), CONTEXT)
    store.destroyed.add("upload-1")
    with pytest.raises(KeyAccessDenied, match=RESTORE_HINT):
        provider.unwrap(wrapped.blob, CONTEXT, "upload-1")


def test_no_material_is_held_between_calls(provider, store):
    wrapped = provider.wrap(secrets.token_bytes(32), CONTEXT)
    reads = store.reads
    provider.unwrap(wrapped.blob, CONTEXT, "upload-1")
    assert store.reads == reads + 1
    assert not any(isinstance(v, bytes | bytearray) for v in vars(provider).values())


def test_unreadable_material_is_transient(provider, store):
    wrapped = provider.wrap(secrets.token_bytes(32), CONTEXT)
    store.down = True
    with pytest.raises(KeyUnavailable, match="could not be read: database is not reachable"):
        provider.unwrap(wrapped.blob, CONTEXT, "upload-1")


def test_material_of_the_wrong_size_is_invalid(store):
    store.keys["upload-1"] = secrets.token_bytes(16)
    provider = UploadedKeyProvider(store.material, "upload-1")
    with pytest.raises(KeyMaterialInvalid, match="not 256 bits"):
        provider.wrap(secrets.token_bytes(32), CONTEXT)


# -- versions ------------------------------------------------------------------------


def test_old_version_still_unwraps_while_current_is_new(store):
    old = UploadedKeyProvider(store.material, "upload-1")
    old_dek = secrets.token_bytes(32)
    old_wrapped = old.wrap(old_dek, CONTEXT)

    store.keys["upload-2"] = random_key()
    new = UploadedKeyProvider(store.material, "upload-2")
    assert new.current_version() == "upload-2"
    new_dek = secrets.token_bytes(32)
    new_wrapped = new.wrap(new_dek, CONTEXT)
    assert new_wrapped.version == "upload-2"
    assert new.unwrap(old_wrapped.blob, CONTEXT, "upload-1") == old_dek
    assert new.unwrap(new_wrapped.blob, CONTEXT, "upload-2") == new_dek
    with pytest.raises(KeyMaterialInvalid):
        new.unwrap(old_wrapped.blob, CONTEXT, "upload-2")

    # Destroying the old version leaves the new one working.
    store.destroyed.add("upload-1")
    with pytest.raises(KeyAccessDenied, match=RESTORE_HINT):
        new.unwrap(old_wrapped.blob, CONTEXT, "upload-1")
    assert new.unwrap(new_wrapped.blob, CONTEXT, "upload-2") == new_dek


# -- Save and Test, describe ---------------------------------------------------------


def test_checks_pass_for_a_good_key(provider, key):
    results = provider.run_checks(CONTEXT)
    assert [r.name for r in results] == ["Key material", "Wrap and unwrap"]
    assert all(r.passed for r in results), results
    assert all_required_passed(results)
    assert key_check_value(key) in results[0].message


@pytest.mark.parametrize(
    ("material", "why"),
    [
        (bytes(32), "all zero"),
        (b"\x42" * 32, "single byte value"),
        (bytes.fromhex("00112233") * 8, "4-byte pattern"),
        pytest.param(secrets.token_bytes(16), "not 256 bits", id="not 256 bits"),
    ],
)
def test_checks_fail_for_a_weak_or_wrong_size_key(material, why):
    provider = UploadedKeyProvider(Store(upload_1=material).material, "upload-1")
    results = provider.run_checks(CONTEXT)
    assert [r.name for r in results] == ["Key material", "Wrap and unwrap"]
    assert not results[0].passed and why in results[0].message
    assert not results[1].passed and results[1].message.startswith("not run")
    assert not all_required_passed(results)


def test_checks_fail_with_the_restore_hint_when_destroyed(provider, store):
    store.destroyed.add("upload-1")
    results = provider.run_checks(CONTEXT)
    assert not results[0].passed and RESTORE_HINT in results[0].message
    assert not all_required_passed(results)


def test_describe(provider, key):
    description = provider.describe()
    assert description.kind == "uploaded"
    assert description.label == "Uploaded key"
    assert description.facts["Key version"] == "upload-1"
    assert description.facts["Key check value (KCV)"] == key_check_value(key)


def test_describe_after_destroy_does_not_raise(provider, store):
    store.destroyed.add("upload-1")
    facts = provider.describe().facts
    assert facts["Key version"] == "upload-1"
    assert "destroyed" in facts["Key check value (KCV)"]


def test_no_key_bytes_in_reprs_descriptions_checks_or_errors(store: Store, key: bytes) -> None:
    provider = UploadedKeyProvider(store.material, "upload-1")
    wrapped = provider.wrap(secrets.token_bytes(32), CONTEXT)
    texts = [
        repr(provider),
        str(provider),
        repr(provider.describe()),
        repr(wrapped),
        repr(provider.run_checks(CONTEXT)),
    ]
    errors: list[KeyProviderError] = []
    for attempt in (
        lambda: provider.unwrap(wrapped.blob, {}, "upload-1"),
        lambda: provider.unwrap(
            wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]), CONTEXT, "upload-1"
        ),
        lambda: UploadedKeyProvider(Store(upload_1=key[:16]).material, "upload-1").wrap(
            b"x", CONTEXT
        ),
    ):
        with pytest.raises(KeyProviderError) as caught:
            attempt()
        errors.append(caught.value)
    store.destroyed.add("upload-1")
    with pytest.raises(KeyAccessDenied) as denied:
        provider.wrap(b"x", CONTEXT)
    errors.append(denied.value)
    texts += [repr(provider.describe()), repr(provider.run_checks(CONTEXT))]
    texts += [f"{e!r} {e} {e.args!r}" for e in errors]
    for text in texts:
        assert not leaks(text, key), text
        assert not leaks(text, key[:16]), text


def test_weak_key_messages_hold_no_key_bytes():
    weak = bytes.fromhex("a1b2c3d4") * 8
    provider = UploadedKeyProvider(Store(upload_1=weak).material, "upload-1")
    text = repr(provider.run_checks(CONTEXT)) + repr(provider.describe())
    assert not leaks(text, weak)
    assert "a1b2c3d4" not in text.lower()
