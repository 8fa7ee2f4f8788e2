"""`make run`'s demo: tenants, logins, records and objects, and safe to run again."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from keys.models import DataKeyVolume, KeyUsageHour, TenantStateDay
from keys.selectors.usage import usage_charts, volume_charts
from objects import keyring, locations
from objects.models import Location, StoredObject
from objects.services import object_open
from records.models import Record
from tenants.models import Membership, Tenant


@pytest.fixture(autouse=True)
def _objects(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.KEYWARD_OBJECT_ROOT = tmp_path / "objects"
    monkeypatch.setenv("KEYWARD_DEMO_PASSWORD", "demo password for tests")
    locations.forget()
    keyring.forget()


def test_the_demo_has_logins_records_and_objects_and_can_be_seeded_again(db) -> None:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert "owner@acme.example" in out.getvalue()
    call_command("seed_demo", stdout=StringIO())  # idempotent
    for slug in ("acme", "globex"):
        tenant = Tenant.objects.get(slug=slug)
        assert Membership.objects.filter(tenant=tenant).count() == 4
        assert Record.objects.filter(tenant=tenant).count() == 400
        objects = StoredObject.objects.filter(tenant=tenant)
        assert objects.count() == 60
        assert set(objects.values_list("location", flat=True)) == {Location.SHARED}
        first = objects.order_by("key").first()
        assert first is not None
        _, chunks = object_open(tenant=tenant, key=first.key)
        assert b"".join(chunks).startswith(b"device,status\n")


def test_the_demo_has_a_week_of_key_use_and_a_month_of_data_for_the_charts(db) -> None:
    call_command("seed_demo", stdout=StringIO())
    acme = Tenant.objects.get(slug="acme")
    hours = KeyUsageHour.objects.filter(tenant=acme).values_list("hour", flat=True).distinct()
    assert 160 <= hours.count() < 7 * 24
    counted = KeyUsageHour.objects.filter(tenant=acme).count()
    call_command("seed_demo", stdout=StringIO())  # history is made once
    assert KeyUsageHour.objects.filter(tenant=acme).count() == counted
    calls, cache = usage_charts(acme, timezone.now())
    assert calls.rects and cache.lines and not calls.empty
    records, _objects = volume_charts(acme, timezone.now().date())
    assert len(records.rows) == 30 and records.rows[-1][1] == "400"
    assert DataKeyVolume.objects.filter(tenant=acme).count() == 30
    assert TenantStateDay.objects.filter(state="vendor_managed").count() == 30
    globex = Tenant.objects.get(slug="globex")
    assert KeyUsageHour.objects.filter(tenant=globex, outcome="error").exists()
