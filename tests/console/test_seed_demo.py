"""`make run`'s demo: tenants, logins, records and objects, and safe to run again."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

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
