"""New key material inside the same AWS KMS key (on-demand or yearly rotation).

LocalStack has no ListKeyRotations, so this runs against a loopback server that
answers the two AWS calls the health check makes, in AWS's own wire format.
"""

from __future__ import annotations

import json

import pytest

from keys.models import DataKey, KekState, KekVersion, KeySource, SourceKind, SourceState
from keys.services.health import key_health_check
from tenants.models import ServiceState, Tenant
from tests.keys.test_aws_kms_provider import _DESCRIBED, FakeAws

KEY_ARN = str(_DESCRIBED["KeyMetadata"]["Arn"])


@pytest.fixture(autouse=True)
def _vendor_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "999988887777")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "vendor-secret")


def rotations(*dates: float) -> tuple[int, str]:
    return 200, json.dumps(
        {
            "Rotations": [
                {"KeyId": KEY_ARN, "RotationDate": d, "RotationType": "ON_DEMAND"} for d in dates
            ],
            "Truncated": False,
        }
    )


def test_new_key_material_pauses_for_confirmation(acme, fake_aws: FakeAws, settings) -> None:
    settings.KEYWARD_AWS_ENDPOINT_URL = fake_aws.url
    tenant: Tenant = acme.tenant
    source = KeySource.objects.create(
        tenant=tenant, kind=SourceKind.AWS_KMS, config={"key_arn": KEY_ARN, "role_arn": ""}
    )
    KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).update(state=SourceState.RETIRED)
    KeySource.objects.filter(pk=source.pk).update(state=SourceState.ACTIVE)
    version = KekVersion.objects.create(
        source=source, provider_version=KEY_ARN, state=KekState.ACTIVE
    )
    DataKey.objects.filter(tenant=tenant).update(kek_version=version)
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.BYOK_ACTIVE)

    fake_aws.answers["DescribeKey"] = (200, json.dumps(_DESCRIBED))
    fake_aws.answers["ListKeyRotations"] = rotations(1_700_000_000)
    assert key_health_check(tenant=tenant) == "ok"  # first sight: recorded
    version.refresh_from_db()
    assert version.material_marker.startswith("2023-11-14")
    assert key_health_check(tenant=tenant) == "ok"  # unchanged

    fake_aws.answers["ListKeyRotations"] = rotations(1_700_000_000, 1_760_000_000)
    assert key_health_check(tenant=tenant) == "rotation_pending"
    tenant.refresh_from_db()
    assert tenant.state == ServiceState.ROTATION_PENDING


def test_without_list_key_rotations_nothing_is_flagged(acme, fake_aws: FakeAws, settings) -> None:
    settings.KEYWARD_AWS_ENDPOINT_URL = fake_aws.url
    tenant: Tenant = acme.tenant
    source = KeySource.objects.create(
        tenant=tenant, kind=SourceKind.AWS_KMS, config={"key_arn": KEY_ARN, "role_arn": ""}
    )
    KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).update(state=SourceState.RETIRED)
    KeySource.objects.filter(pk=source.pk).update(state=SourceState.ACTIVE)
    version = KekVersion.objects.create(
        source=source, provider_version=KEY_ARN, state=KekState.ACTIVE
    )
    DataKey.objects.filter(tenant=tenant).update(kek_version=version)
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.BYOK_ACTIVE)
    fake_aws.answers["DescribeKey"] = (200, json.dumps(_DESCRIBED))
    fake_aws.kms_error("ListKeyRotations", 400, "AccessDeniedException", "not in the key policy")
    assert key_health_check(tenant=tenant) == "ok"
    tenant.refresh_from_db()
    assert tenant.state == ServiceState.BYOK_ACTIVE
