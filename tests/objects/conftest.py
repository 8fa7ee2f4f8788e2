from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.services import Actor
from keys.models import DataKey, DekState
from keys.runtime import RedisStateSource, envelope, envelope_state_source
from keys.services.deks import dek_rotate
from objects import keyring, locations
from tenants.models import ServiceState, Tenant

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def object_root(settings: Any, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "objects"
    settings.KEYWARD_OBJECT_STORE = "filesystem"
    settings.KEYWARD_OBJECT_ROOT = root
    locations.forget()
    keyring.forget()
    yield root
    locations.forget()
    keyring.forget()


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def random_blobs(n: int, low: int = 1024, high: int = 4096, seed: int = 0) -> dict[str, bytes]:
    import random

    rng = random.Random(seed)
    return {f"docs/{i:05d}.bin": os.urandom(rng.randint(low, high)) for i in range(n)}


def set_state(tenant: Tenant, state: str) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(state=state)
    tenant.refresh_from_db()
    publish(tenant)


def publish(tenant: Tenant) -> None:
    """What publish_key_state does after commit (tests outside transactions never commit)."""
    source = envelope_state_source()
    if isinstance(source, RedisStateSource):
        source.publish(str(tenant.pk))
    envelope().forget(str(tenant.pk))
    keyring.forget(str(tenant.pk))


def new_target_dek(tenant: Tenant) -> DataKey:
    """Rotate the DEK (as the BYOK flows will before the move) and return the new one."""
    dek = dek_rotate(tenant=tenant, actor=SYSTEM, reason="tests")
    publish(tenant)
    return dek


def active_dek(tenant: Tenant) -> DataKey:
    return DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)


MIGRATING = ServiceState.MIGRATING
MIGRATING_BACK = ServiceState.MIGRATING_BACK
