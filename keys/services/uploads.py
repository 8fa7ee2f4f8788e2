"""Wrapped-key upload (BYOK): import parameters, upload, and the uploaded key's versions.

1. `key_import_create` makes a fresh RSA-4096 wrapping key pair (private half
   stored only sealed under the vendor root key) and a signed, 24-hour,
   single-use import token bound to the tenant and that key.
2. `key_upload` checks the token, unwraps the customer's key with the import's
   private key, refuses wrong sizes and weak keys, stores the key only sealed
   under the vendor root key as a new version, and destroys the import's
   private key. A new upload is a new version (a rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import uuid
import zipfile
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from crypto import importkit
from keys import aws_vendor
from keys.errors import KeyActionRefused
from keys.models import (
    DataKey,
    ImportState,
    KekState,
    KekVersion,
    KeyImport,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.providers.base import KeyProviderError
from keys.providers.uploaded import UploadedKeyProvider
from keys.runtime import dek_context
from keys.selectors.sources import (
    UPLOADED_KEY,
    current_source,
)
from keys.services.addon import byok_addon_required
from keys.services.health import tenant_mark_rotation_pending
from keys.vault import Sealed, packed, seal, unseal
from tenants.models import ServiceState, Tenant

MAX_UPLOAD_BYTES = 64 * 1024


IMPORT_PRIVATE = "import-private-key"


UPLOADED_REASON = "a new key was uploaded; confirm the new version"


def _token_secret() -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), b"keyward-import-token", hashlib.sha256).digest()


def key_import_create(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> tuple[KeyImport, bytes]:
    """New import parameters; returns the import and the zip to download.

    With the vendor's key store in AWS KMS, the wrapping key is AWS's own (from
    GetParametersForImport on a new EXTERNAL key) and Keyward holds no private key.
    """
    byok_addon_required(tenant)
    now = timezone.now()
    key_import = KeyImport(
        id=uuid.uuid4(), tenant=tenant, expires_at=now + importkit.DEFAULT_TOKEN_TTL
    )
    if settings.KEYWARD_UPLOAD_KEY_STORE == "aws_kms":
        try:
            arn, public_der, aws_token = aws_vendor.create_external_key(
                tenant_id=str(tenant.pk), tenant_slug=tenant.slug
            )
        except aws_vendor.VendorKmsError as exc:
            raise KeyActionRefused(str(exc)) from None
        key_import.aws_key_arn = arn
        key_import.aws_import_token = aws_token
        key_import.private_wrapped = b""
        key_import.private_kek_version = ""
        public_pem = serialization.load_der_public_key(public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        wrapping = importkit.new_wrapping_key()
        public_der, public_pem = wrapping.public_der, wrapping.public_pem
        sealed = seal(purpose=IMPORT_PRIVATE, owner=str(key_import.pk), value=wrapping.private_pem)
        key_import.private_wrapped = sealed.blob
        key_import.private_kek_version = sealed.root_version
    key_import.public_der = public_der
    key_import.fingerprint = importkit.public_key_fingerprint(public_der)
    token = importkit.issue_token(
        _token_secret(),
        tenant_id=str(tenant.pk),
        import_id=str(key_import.pk),
        public_der=public_der,
        now=now,
    )
    with transaction.atomic():
        key_import.save()
        record(
            tenant=tenant,
            actor=actor,
            action="key_import.create",
            target=str(key_import.pk),
            details={
                "fingerprint": key_import.fingerprint,
                "expires_at": key_import.expires_at.isoformat(),
                "store": settings.KEYWARD_UPLOAD_KEY_STORE,
            },
            request=request,
        )
    readme = importkit.import_readme(
        tenant_name=tenant.name, expires_at=key_import.expires_at, max_upload_bytes=MAX_UPLOAD_BYTES
    )
    archive = io.BytesIO()
    contents = {
        "WrappingPublicKey.bin": public_der,
        "WrappingPublicKey.pem": public_pem,
        "ImportToken.bin": token,
        "README.txt": readme.encode(),
    }
    # The zip holds the files README.txt lists, from the same list: no drift.
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, _ in importkit.KIT_FILES:
            bundle.writestr(name, contents[name])
    return key_import, archive.getvalue()


def _find_import(tenant: Tenant, token: bytes) -> tuple[KeyImport, importkit.TokenClaims]:
    """The tenant's import this token was issued for, or the most telling error."""
    now = timezone.now()
    candidates: list[KeyImport | None] = list(
        KeyImport.objects.filter(tenant=tenant).order_by("-created")[:50]
    )
    errors: list[importkit.InvalidImportToken] = []
    for candidate in candidates or [None]:
        try:
            claims = importkit.verify_token(
                _token_secret(),
                token,
                tenant_id=str(tenant.pk),
                public_der=bytes(candidate.public_der) if candidate else b"",
                now=now,
            )
        except importkit.InvalidImportToken as exc:
            if not isinstance(exc, importkit.TokenWrongKey):
                raise KeyActionRefused(str(exc)) from None
            errors.append(exc)
            continue
        assert candidate is not None
        return candidate, claims
    raise KeyActionRefused(
        "This import token was not issued for any import of this tenant: download new "
        "import parameters here and wrap your key with their public key."
    )


def _next_label(source: KeySource) -> str:
    return f"upload-{source.versions.count() + 1}"


def key_upload(
    *,
    tenant: Tenant,
    wrapped_key: bytes,
    token: bytes,
    material_expires_at: datetime | None,
    actor: Actor,
    request: HttpRequest | None = None,
) -> KekVersion:
    """Accept an uploaded key, or refuse with a message (recorded as a failure)."""
    try:
        version = _accept(tenant, wrapped_key, token, material_expires_at, actor, request)
    except (KeyActionRefused, importkit.KeyImportError) as exc:
        record(
            tenant=tenant,
            actor=actor,
            action="key.upload",
            outcome=Outcome.FAILURE,
            reason=str(exc),
            request=request,
        )
        raise KeyActionRefused(str(exc)) from None
    return version


def _accept(
    tenant: Tenant,
    wrapped_key: bytes,
    token: bytes,
    material_expires_at: datetime | None,
    actor: Actor,
    request: HttpRequest | None,
) -> KekVersion:
    byok_addon_required(tenant)
    if material_expires_at is not None and material_expires_at <= timezone.now():
        raise KeyActionRefused("The key's expiry date must be in the future.")
    if Tenant.objects.get(pk=tenant.pk).state in (
        ServiceState.MIGRATING,
        ServiceState.MIGRATING_BACK,
        ServiceState.REWRAPPING,
    ):
        raise KeyActionRefused("A key move is in progress; upload when it has finished.")
    key_import, _claims = _find_import(tenant, token)
    with transaction.atomic():
        locked = KeyImport.objects.select_for_update().get(pk=key_import.pk)
        if locked.state == ImportState.USED:
            raise KeyActionRefused(
                "This import token was used already: each token works once. Download new "
                "import parameters and wrap your key again."
            )
        if locked.state != ImportState.OPEN or locked.expires_at <= timezone.now():
            raise KeyActionRefused("These import parameters expired: download new ones.")
        if locked.aws_key_arn:
            return _accept_into_kms(
                tenant, locked, wrapped_key, material_expires_at, actor, request
            )
        private_pem = unseal(
            purpose=IMPORT_PRIVATE,
            owner=str(locked.pk),
            sealed=Sealed(bytes(locked.private_wrapped), locked.private_kek_version),
        )
        material = importkit.unwrap_uploaded_key(private_pem, wrapped_key)
        del private_pem
        importkit.check_key_material(material)
        kcv = importkit.key_check_value(material)
        source = current_source(tenant, SourceKind.UPLOADED)
        source = source or KeySource.objects.create(tenant=tenant, kind=SourceKind.UPLOADED)
        destroyed = next(
            (
                revoked
                for revoked in source.versions.filter(material__isnull=True)
                if _unwraps_under(revoked, material)
            ),
            None,
        )
        if destroyed is not None:
            # The same key again after a revoke: Keyward's copy comes back under
            # its old version, so the data keys wrapped by it unwrap again.
            sealed = seal(purpose=UPLOADED_KEY, owner=str(destroyed.pk), value=material)
            del material
            destroyed.material = packed(sealed)
            destroyed.material_expires_at = material_expires_at
            destroyed.save(update_fields=["material", "material_expires_at"])
            _use_up(locked)
            record(
                tenant=tenant,
                actor=actor,
                action="key.reupload",
                target=destroyed.provider_version,
                details={"check_value": kcv, "import": str(locked.pk)},
                request=request,
            )
            return destroyed
        label = _next_label(source)
        version = KekVersion(
            id=uuid.uuid4(),
            source=source,
            provider_version=label,
            state=KekState.PENDING,
            check_value=kcv,
            material_expires_at=material_expires_at,
        )
        sealed = seal(purpose=UPLOADED_KEY, owner=str(version.pk), value=material)
        del material
        version.material = packed(sealed)
        version.save()
        if source.state == SourceState.ACTIVE:
            # A new upload for a key in use is a rotation: it waits, paused, until an
            # administrator confirms it; data keys stay under the current version.
            rotation = True
        else:
            # The configuration names the newest upload, so a new upload needs a new test.
            rotation = False
            source.config = {"version": label, "check_value": kcv}
            source.state = SourceState.DRAFT
            source.save()
        _use_up(locked)
        record(
            tenant=tenant,
            actor=actor,
            action="key.upload",
            target=label,
            details={
                "check_value": kcv,
                "import": str(locked.pk),
                "expires_at": material_expires_at.isoformat() if material_expires_at else None,
                "rotation": rotation,
            },
            request=request,
        )
    if rotation:
        tenant_mark_rotation_pending(
            tenant, source, label, actor=actor, reason=UPLOADED_REASON, cause="upload"
        )
    return version


def _unwraps_under(version: KekVersion, material: bytes) -> bool:
    """Is `material` the key of `version`? Proved by unwrapping one of the data keys
    it wrapped (AES-GCM authenticates), never by the check value: 5 bytes can be
    matched by a search, and a wrong key attached to the version would stop the
    right one from ever restoring it."""
    dek = (
        DataKey.objects.filter(kek_version=version)
        .exclude(wrapped=b"")
        .order_by("-version")
        .first()
    )
    if dek is None:
        return False  # nothing depends on it: a new version is as good
    trial = UploadedKeyProvider(lambda _: material, version.provider_version)
    try:
        trial.unwrap(
            bytes(dek.wrapped),
            dek_context(str(dek.tenant_id), dek.version),
            version.provider_version,
        )
    except KeyProviderError:
        return False
    return True


def _use_up(key_import: KeyImport) -> None:
    key_import.state = ImportState.USED
    key_import.used_at = timezone.now()
    key_import.private_wrapped = b""  # the wrapping private key is destroyed
    key_import.save(update_fields=["state", "used_at", "private_wrapped"])


def _accept_into_kms(
    tenant: Tenant,
    key_import: KeyImport,
    wrapped_key: bytes,
    material_expires_at: datetime | None,
    actor: Actor,
    request: HttpRequest | None,
) -> KekVersion:
    """The Netcore flow: the wrapped key goes into the import's EXTERNAL KMS key.

    Keyward never sees the plaintext, so no key check value can be shown and the
    weak-key checks are AWS's; Save and Test's round trip proves the key works.
    """
    if len(wrapped_key) != importkit.WRAPPED_KEY_BYTES:
        raise KeyActionRefused(
            f"expected a {importkit.WRAPPED_KEY_BYTES}-byte RSA-4096 ciphertext, got "
            f"{len(wrapped_key)} bytes: upload the CustomerEncryptionKey.bin of README.txt"
        )
    try:
        aws_vendor.import_key_material(
            key_arn=key_import.aws_key_arn,
            aws_token=bytes(key_import.aws_import_token or b""),
            wrapped_key=wrapped_key,
            valid_to=material_expires_at,
        )
    except aws_vendor.VendorKmsError as exc:
        raise KeyActionRefused(str(exc)) from None
    source = current_source(tenant, SourceKind.UPLOADED)
    source = source or KeySource.objects.create(tenant=tenant, kind=SourceKind.UPLOADED)
    version = KekVersion.objects.create(
        source=source,
        provider_version=key_import.aws_key_arn,
        state=KekState.PENDING,
        material_expires_at=material_expires_at,
    )
    rotation = source.state == SourceState.ACTIVE
    if not rotation:
        source.config = {"store": "aws_kms", "key_arn": key_import.aws_key_arn}
        source.state = SourceState.DRAFT
        source.save()
    key_import.state = ImportState.USED
    key_import.used_at = timezone.now()
    key_import.aws_import_token = b""
    key_import.save(update_fields=["state", "used_at", "aws_import_token"])
    record(
        tenant=tenant,
        actor=actor,
        action="key.upload",
        target=key_import.aws_key_arn,
        details={"store": "aws_kms", "import": str(key_import.pk), "rotation": rotation},
        request=request,
    )
    if rotation:
        transaction.on_commit(
            lambda: tenant_mark_rotation_pending(
                tenant,
                source,
                key_import.aws_key_arn,
                actor=actor,
                reason=UPLOADED_REASON,
                cause="upload",
            )
        )
    return version


def key_imports_expire(*, tenant: Tenant | None = None) -> int:
    """Destroy the wrapping private key of every import past its validity, or of
    every import of `tenant` (crypto-shredding); how many were destroyed.

    An import's private key is needed only until its single upload; one that
    expired unused, or whose upload rolled back, would otherwise keep it sealed
    in the database for ever. Each destruction is audited.
    """
    pending = KeyImport.objects.exclude(private_wrapped=b"")
    if tenant is None:
        pending = pending.filter(expires_at__lte=timezone.now())
    else:
        pending = pending.filter(tenant=tenant)
    destroyed = 0
    for import_id in list(pending.values_list("pk", flat=True)):
        with transaction.atomic():
            key_import = (
                KeyImport.objects.select_for_update().select_related("tenant").get(pk=import_id)
            )
            if not bytes(key_import.private_wrapped):
                continue  # used meanwhile
            if key_import.state == ImportState.OPEN:
                key_import.state = ImportState.EXPIRED
            key_import.private_wrapped = b""
            key_import.aws_import_token = None
            key_import.save(update_fields=["state", "private_wrapped", "aws_import_token"])
            record(
                tenant=key_import.tenant,
                actor=Actor.system("import expiry"),
                action="key.import_expired",
                target=str(key_import.pk),
                reason="the import's wrapping private key was destroyed"
                + (" with the tenant's keys" if tenant is not None else ": its validity ended"),
            )
            destroyed += 1
    return destroyed
