"""The Keys, Data and Overview pages run a fixed number of queries, however many data
keys, KEK versions, records and objects the tenant has: no N+1, no count per row."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.services import Actor
from keys.models import DataKey, DekState, KekState, KekVersion, KeySource
from keys.runtime import envelope
from keys.selectors.overview import SHOWN_RETIRED_DEKS
from keys.services.deks import dek_rotate
from objects.models import StoredObject
from records.services import records_create
from records.synthetic import synthetic_records
from tests.conftest import login

SYSTEM = Actor.system("tests")
PAGES = ("keys:overview", "data:overview", "console:dashboard")
# What each page needs today; a new query per page is a choice to make here.
MOST = {"keys:overview": 20, "data:overview": 13, "console:dashboard": 8}


def queries(client: Any, slug: str) -> dict[str, int]:
    counts = {}
    for name in PAGES:
        with CaptureQueriesContext(connection) as run:
            response = client.get(reverse(name, args=[slug]))
        assert response.status_code == 200, name
        counts[name] = len(run)
    return counts


def grow(tenant: Any, rotations: int) -> None:
    """Many DEKs (most retired and empty, a few holding records and objects), more KEK
    versions, records and objects under several keys."""
    source = KeySource.objects.get(tenant=tenant)
    KekVersion.objects.bulk_create(
        KekVersion(source=source, provider_version=f"old-{n}", state=KekState.RETIRED)
        for n in range(8)
    )
    for n in range(rotations):
        dek = dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
        envelope().forget(str(tenant.pk))
        if n % 5 == 0:
            records_create(tenant=tenant, items=list(synthetic_records(3, seed=n, prefix=f"{n}-")))
            StoredObject.objects.bulk_create(
                StoredObject(
                    tenant=tenant,
                    key=f"docs/{n}/{i}",
                    location="shared" if i % 2 else "dedicated",
                    size=10 * i,
                    ciphertext_size=10 * i + 40,
                    sha256="0" * 64,
                    dek=dek,
                )
                for i in range(4)
            )
    holding = set(StoredObject.objects.filter(tenant=tenant).values_list("dek_id", flat=True))
    DataKey.objects.filter(tenant=tenant, state=DekState.RETIRING).exclude(pk__in=holding).exclude(
        sealed_fields__isnull=False
    ).update(state=DekState.RETIRED)


def test_page_queries_do_not_grow_with_keys_or_data(acme) -> None:
    client = login(acme.owner)
    before = queries(client, "acme")
    grow(acme.tenant, rotations=SHOWN_RETIRED_DEKS + 4)
    after = queries(client, "acme")
    assert after == before, (before, after)
    assert all(after[name] <= MOST[name] for name in PAGES), after
    page = client.get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "holding no data, not listed" in page
