"""A confirmed rotation's rewrap with overlapping key-store calls (LocalStack's KMS).

Each data key must end wrapped exactly once under the new version, with no
more calls in flight than the bound, and a failure mid-batch keeps what moved.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, KeySource, SourceKind
from keys.providers.aws_kms import AwsKmsProvider
from keys.providers.base import KeyUnavailable
from keys.runtime import reset_for_tests
from keys.services.deks import dek_rotate
from keys.services.rotation import kek_confirm_rotation, kek_rewrap_run
from records.services import record_fields
from tenants.models import ServiceState, Tenant
from tests.keys.test_lifecycle_races import move_alias
from tests.support.faults import scale, seeded

pytestmark = pytest.mark.faults


class Wraps:
    """Counts AWS KMS wraps per data key and the most calls in flight at once."""

    def __init__(self, fail_at: int = 0) -> None:
        self.lock = threading.Lock()
        self.done: Counter[str] = Counter()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_at = fail_at

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_wrap = AwsKmsProvider.wrap
        wraps = self

        def counted_wrap(provider: AwsKmsProvider, dek: bytes, context: Any) -> Any:
            with wraps.lock:
                wraps.calls += 1
                failing = wraps.calls == wraps.fail_at
                wraps.in_flight += 1
                wraps.most_in_flight = max(wraps.most_in_flight, wraps.in_flight)
            try:
                if failing:
                    raise KeyUnavailable("injected: the key store dropped this call")
                wrapped = real_wrap(provider, dek, context)
            finally:
                with wraps.lock:
                    wraps.in_flight -= 1
            if context.get("keyward:purpose") == "dek":  # not the tenant's other keys
                with wraps.lock:
                    wraps.done[context["keyward:dek"]] += 1
            return wrapped

        monkeypatch.setattr(AwsKmsProvider, "wrap", counted_wrap)


def rotated(byok: Any, deks: int) -> tuple[Tenant, KeySource, str]:
    """`deks` data keys under the old key, the alias moved and the rotation confirmed."""
    tenant = byok["acme"].tenant
    for _ in range(deks - 1):
        dek_rotate(tenant=tenant, actor=Actor.system("tests"), reason="more keys")
    new_key = move_alias(byok)
    kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(byok["acme"].owner))
    return tenant, KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS), new_key


def test_each_dek_is_wrapped_once_with_calls_overlapping_within_the_bound(
    byok, settings, monkeypatch
) -> None:
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 4
    tenant, source, new_key = rotated(byok, 24)
    wraps = Wraps()
    wraps.install(monkeypatch)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    deks = DataKey.objects.filter(tenant=tenant)
    assert set(deks.values_list("kek_version__provider_version", flat=True)) == {new_key}
    assert wraps.done == {str(v): 1 for v in deks.values_list("version", flat=True)}
    assert 1 < wraps.most_in_flight <= 4
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE
    assert AuditEvent.objects.filter(tenant=tenant, action="kek.rotation_done").count() == 1
    reset_for_tests()  # nothing cached: the records decrypt through the rewrapped DEK
    assert record_fields(tenant, byok["records"][0])


def test_a_call_failing_mid_batch_keeps_what_moved_and_a_rerun_moves_the_rest_once(
    byok, settings, monkeypatch
) -> None:
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 4
    count = scale(12, 40)
    tenant, source, new_key = rotated(byok, count)
    wraps = Wraps(fail_at=seeded("rewrap failure").randint(2, count - 1))
    wraps.install(monkeypatch)
    with pytest.raises(KeyUnavailable):
        kek_rewrap_run(source_id=str(source.pk))
    deks = DataKey.objects.filter(tenant=tenant)
    moved = deks.filter(kek_version__provider_version=new_key).count()
    assert 0 < moved < count  # written before the failure was raised
    assert moved == sum(wraps.done.values())  # every successful wrap was kept
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.REWRAPPING
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    assert set(deks.values_list("kek_version__provider_version", flat=True)) == {new_key}
    assert wraps.done == {str(v): 1 for v in deks.values_list("version", flat=True)}
    assert AuditEvent.objects.filter(tenant=tenant, action="kek.rotation_done").count() == 1
