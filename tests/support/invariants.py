"""What must hold after any crash, kill or fault: checked the same way by every fault test.

Each check raises AssertionError naming what broke, and returns how many
things it verified, so a test can add up the checks it passed for the
figures (`Tally`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import StringIO

from django.core.management import call_command
from django.db.models import Count

from audit.models import AuditEvent
from keys.models import DataKey, DekState, KekState, KeySource, SourceKind, SourceState
from keys.registry import provider_for
from keys.rootkey import local_provider
from keys.runtime import dek_context, envelope
from keys.selectors.sources import LIVE_DEK_STATES
from objects.models import StoredObject
from objects.services import object_open
from records.indexkeys import forget_cached_keys, index_context
from records.models import IndexKey, IndexKeyState, Record
from records.services import record_fields
from tenants.models import ServiceState, Tenant

TRANSIENT_STATES = (ServiceState.MIGRATING, ServiceState.REWRAPPING, ServiceState.MIGRATING_BACK)


@dataclass
class Tally:
    """Invariant checks passed, by name: the figures a fault test reports."""

    passed: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, count: int = 1) -> int:
        self.passed[name] += count
        return count

    def report(self, title: str) -> str:
        lines = [f"{title}: {sum(self.passed.values())} invariant checks passed"]
        lines += [f"  {name}: {n}" for name, n in sorted(self.passed.items())]
        text = "\n".join(lines)
        print(text)
        return text


def expected_kek(tenant: Tenant) -> tuple[KeySource, str]:
    """The source and KEK version the tenant's state says its live DEKs are under."""
    tenant.refresh_from_db()
    if tenant.state == ServiceState.VENDOR_MANAGED:
        source = KeySource.objects.get(
            tenant=tenant, kind=SourceKind.LOCAL, state=SourceState.ACTIVE
        )
        return source, local_provider().current_version()
    if tenant.state in (ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED):
        source = KeySource.objects.exclude(kind=SourceKind.LOCAL).get(
            tenant=tenant, state=SourceState.ACTIVE
        )
        return source, provider_for(source).current_version()
    raise AssertionError(f"{tenant.slug} is {tenant.state}: no settled KEK to compare with")


def deks_unwrap(tenant: Tenant) -> int:
    """Every live DEK is wrapped under exactly one KEK version and opens through
    that version's real provider (mid-move a DEK may be under either side)."""
    checked = 0
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES).select_related(
        "kek_version__source"
    )
    for dek in live:
        assert bytes(dek.wrapped), f"{tenant.slug}: live DEK v{dek.version} has no wrapped copy"
        kek = dek.kek_version
        material = provider_for(kek.source).unwrap(
            bytes(dek.wrapped), dek_context(str(tenant.pk), dek.version), kek.provider_version
        )
        assert len(material) == 32, f"{tenant.slug}: DEK v{dek.version} unwrapped to junk"
        checked += 1
    return checked


def deks_settled(tenant: Tenant, expected_count: int | None = None) -> int:
    """Every live DEK is under exactly the KEK version the tenant's state says,
    and opens through it; no DEK was made twice (one row per version)."""
    source, version = expected_kek(tenant)
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
    wrong = live.exclude(kek_version__source=source, kek_version__provider_version=version)
    assert not wrong.exists(), (
        f"{tenant.slug} ({tenant.state}): DEKs "
        f"{sorted(wrong.values_list('version', flat=True))[:10]} not under {version}"
    )
    assert live.filter(state=DekState.ACTIVE).count() == 1, f"{tenant.slug}: not one active DEK"
    doubled = (
        DataKey.objects.filter(tenant=tenant)
        .values("version")
        .annotate(n=Count("pk"))
        .filter(n__gt=1)
    )
    assert not doubled.exists(), f"{tenant.slug}: DEK versions stored twice: {list(doubled)}"
    if expected_count is not None:
        total = DataKey.objects.filter(tenant=tenant).count()
        assert total == expected_count, f"{tenant.slug}: {total} DEK rows, {expected_count} before"
    return deks_unwrap(tenant) + 1


def index_keys_settled(tenant: Tenant) -> int:
    """The lookup keys in use follow the DEKs: same KEK version, open through it."""
    source, version = expected_kek(tenant)
    checked = 0
    for key in IndexKey.objects.filter(tenant=tenant).exclude(state=IndexKeyState.RETIRED):
        kek = key.kek_version
        assert (kek.source_id, kek.provider_version) == (source.pk, version), (
            f"{tenant.slug}: lookup key v{key.version} under {kek.provider_version}, not {version}"
        )
        material = provider_for(kek.source).unwrap(
            bytes(key.wrapped), index_context(str(tenant.pk), key.version), kek.provider_version
        )
        assert len(material) == 32
        checked += 1
    return checked


def snapshot_records(tenant: Tenant) -> dict[str, dict[str, str]]:
    """Every record's fields, decrypted: what `records_decrypt` compares with."""
    envelope().forget(str(tenant.pk))
    return {
        str(r.uid): record_fields(tenant, r)
        for r in Record.objects.filter(tenant=tenant).select_related("sealed")
    }


def records_decrypt(tenant: Tenant, before: Mapping[str, Mapping[str, str]]) -> int:
    """Every record decrypts (from the key store, not a cache) to what it held before."""
    envelope().forget(str(tenant.pk))
    forget_cached_keys()
    after = snapshot_records(tenant)
    assert after.keys() == before.keys(), f"{tenant.slug}: records lost or added"
    changed = [uid for uid in before if after[uid] != before[uid]]
    assert not changed, f"{tenant.slug}: {len(changed)} records changed, e.g. {changed[0]}"
    return len(after)


def objects_verify(tenant: Tenant, checksums: Mapping[str, str]) -> int:
    """Every object reads back through its DEK to the SHA-256 it was written with."""
    keys = set(StoredObject.objects.filter(tenant=tenant).values_list("key", flat=True))
    assert keys == set(checksums), f"{tenant.slug}: objects lost or added"
    return objects_verify_some(tenant, checksums)


def objects_verify_some(tenant: Tenant, checksums: Mapping[str, str]) -> int:
    """These objects read back to their SHA-256 (a sample, while work goes on)."""
    for key, sha256 in checksums.items():
        _obj, stream = object_open(tenant=tenant, key=key)
        digest = hashlib.sha256(b"".join(stream)).hexdigest()
        assert digest == sha256, f"{tenant.slug}: object {key} does not match its checksum"
    return len(checksums)


def destroyed(tenant: Tenant) -> int:
    """Crypto-shredded: no wrapped DEK, no usable KEK version, no credentials left."""
    tenant.refresh_from_db()
    assert tenant.state == ServiceState.DESTROYED, f"{tenant.slug} is {tenant.state}"
    keys = DataKey.objects.filter(tenant=tenant)
    assert not keys.exclude(state=DekState.DESTROYED).exists()
    assert not keys.exclude(wrapped=b"").exists()
    sources = KeySource.objects.filter(tenant=tenant)
    assert not sources.exclude(sealed_credentials=None).exists()
    for source in sources:
        assert not source.versions.exclude(state=KekState.REVOKED).exists()
        assert not source.versions.exclude(material=None).exists()
    return 1


def audit_chains_verify() -> int:
    """`manage.py audit_verify`: every hash chain unbroken (CommandError otherwise)."""
    out = StringIO()
    call_command("audit_verify", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("ok") for line in lines), out.getvalue()
    return len(lines)


def none_transient(tenants: Iterable[Tenant] | None = None) -> int:
    """No tenant left mid-move (the resume job's promise)."""
    query = (
        Tenant.objects.all()
        if tenants is None
        else Tenant.objects.filter(pk__in=[t.pk for t in tenants])
    )
    stuck = list(query.filter(state__in=TRANSIENT_STATES).values_list("slug", "state"))
    assert not stuck, f"tenants left in a transient state: {stuck}"
    return query.count()


def events_once(tenant: Tenant | None, *actions: str, target: str | None = None) -> int:
    """Each action recorded exactly once: a rerun after a kill did not do it again."""
    for action in actions:
        events = AuditEvent.objects.filter(tenant=tenant, action=action)
        if target is not None:
            events = events.filter(target=target)
        n = events.count()
        who = tenant.slug if tenant is not None else "vendor"
        assert n == 1, f"{who}: {action} recorded {n} times"
    return len(actions)
