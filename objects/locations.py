"""Where a tenant's objects live: the shared location or the tenant's dedicated one.

- shared: one folder or bucket for every vendor-managed tenant, each under
  the prefix `tenants/<tenant id>/`.
- dedicated: the tenant's own folder, or its own bucket
  `<KEYWARD_OBJECT_S3_DEDICATED_PREFIX>-<first 16 hex digits of the tenant id>`.
  When the tenant's key store can encrypt storage itself (an AWS KMS key),
  the bucket's default encryption is SSE-KMS under the customer's key, on top
  of the per-object encryption under the tenant's DEKs.

Each StoredObject names its location, so reads never guess; `current_location`
only says where new objects go.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from keys.models import KeySource, SourceKind, SourceState
from keys.registry import provider_for
from objects.models import Location
from objects.storage import FilesystemStorage, Storage
from tenants.models import Tenant

_lock = threading.Lock()
_storages: dict[tuple[Any, ...], Storage] = {}
_ensured: set[int] = set()  # ids of the cached storages already ensured
_s3_client: tuple[tuple[Any, ...], Any] | None = None


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}"


def dedicated_name(tenant: Tenant) -> str:
    """The dedicated bucket's name (S3 allows 3-63 of a-z, 0-9 and '-')."""
    return f"{settings.KEYWARD_OBJECT_S3_DEDICATED_PREFIX}-{tenant.pk.hex[:16]}"


def _customer_source(tenant: Tenant) -> KeySource | None:
    """The customer key a dedicated location belongs to: the active one, else the one
    being enabled (tested) or just left (retired), newest first."""
    sources = KeySource.objects.filter(tenant=tenant).exclude(kind=SourceKind.LOCAL)
    for state in (SourceState.ACTIVE, SourceState.TESTED, SourceState.RETIRED):
        found = sources.filter(state=state).order_by("-created").first()
        if found is not None:
            return found
    return None


def current_location(tenant: Tenant) -> str:
    """Where new objects of the tenant go: dedicated under a customer key, else shared."""
    active = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .values_list("kind", flat=True)
        .first()
    )
    return Location.DEDICATED if active and active != SourceKind.LOCAL else Location.SHARED


def _settings_in_use() -> tuple[Any, ...]:
    return (
        settings.KEYWARD_OBJECT_STORE,
        str(settings.KEYWARD_OBJECT_ROOT),
        settings.KEYWARD_OBJECT_S3_BUCKET,
        settings.KEYWARD_OBJECT_S3_DEDICATED_PREFIX,
        settings.KEYWARD_OBJECT_S3_ENDPOINT_URL,
        settings.KEYWARD_OBJECT_S3_REGION,
    )


def _client(config: tuple[Any, ...]) -> Any:
    """One boto3 S3 client per process and settings (clients are thread-safe)."""
    global _s3_client
    if _s3_client is not None and _s3_client[0] == config:
        return _s3_client[1]
    # boto3 loads only where objects live in S3: the embedded default never needs it.
    # boto3 loads only where objects live in S3: the embedded default never needs it.
    import boto3.session  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    make_client: Any = boto3.session.Session().client
    client = make_client(
        "s3",
        endpoint_url=settings.KEYWARD_OBJECT_S3_ENDPOINT_URL,
        region_name=settings.KEYWARD_OBJECT_S3_REGION,
        config=Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=20,
        ),
    )
    _s3_client = (config, client)
    return client


def _sse_key(tenant: Tenant) -> str | None:
    source = _customer_source(tenant)
    if source is None:
        return None
    return provider_for(source).storage_encryption_key()


def _build(tenant: Tenant, location: str, config: tuple[Any, ...], sse: str | None) -> Storage:
    tenant_id = str(tenant.pk)
    if config[0] == "filesystem":
        root = settings.KEYWARD_OBJECT_ROOT
        if location == Location.SHARED:
            return FilesystemStorage(root / "shared" / tenant_prefix(tenant_id))
        return FilesystemStorage(root / "dedicated" / tenant_id)
    from objects.storage.s3 import S3Storage  # noqa: PLC0415  (boto3: S3 only)

    region = settings.KEYWARD_OBJECT_S3_REGION
    if location == Location.SHARED:
        return S3Storage(
            settings.KEYWARD_OBJECT_S3_BUCKET,
            tenant_prefix(tenant_id),
            client=_client(config),
            region=region,
        )
    return S3Storage(
        dedicated_name(tenant), client=_client(config), region=region, sse_kms_key_id=sse
    )


def storage_for(tenant: Tenant, location: str) -> Storage:
    """The Storage holding the tenant's objects at `location` ("shared" or "dedicated")."""
    if location not in Location.values:
        raise ValueError(f"unknown object location {location!r}")
    config = _settings_in_use()
    sse = None
    if config[0] == "s3" and location == Location.DEDICATED:
        sse = _sse_key(tenant)
    cache_key = (str(tenant.pk), location, config, sse)
    with _lock:
        storage = _storages.get(cache_key)
        if storage is None:
            if len(_storages) > 10_000:
                _storages.clear()
                _ensured.clear()
            storage = _storages[cache_key] = _build(tenant, location, config, sse)
    return storage


def ensured(tenant: Tenant, location: str) -> Storage:
    """storage_for, with the folder or bucket (and its encryption) made once per process."""
    storage = storage_for(tenant, location)
    with _lock:
        done = id(storage) in _ensured
    if not done:
        storage.ensure()
        with _lock:
            _ensured.add(id(storage))
    return storage


def forget() -> None:
    """Drop cached storages (tests that change the settings)."""
    global _s3_client
    with _lock:
        _storages.clear()
        _ensured.clear()
        _s3_client = None
