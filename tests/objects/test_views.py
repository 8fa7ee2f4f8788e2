from __future__ import annotations

from typing import Any

import pytest

from objects.migration import migration_start
from objects.models import Direction
from objects.services import object_put
from tests.conftest import login
from tests.objects.conftest import MIGRATING, new_target_dek, set_state

pytestmark = pytest.mark.urls("tests.objects.urls")


def progress_url(slug: str) -> str:
    return f"/t/{slug}/data/objects/migration/progress/"


def section_url(slug: str) -> str:
    return f"/t/{slug}/data/objects/"


@pytest.fixture
def moving(acme: Any) -> Any:
    for i in range(3):
        object_put(tenant=acme.tenant, key=f"k{i}", chunks=[b"x" * 1000])
    target = new_target_dek(acme.tenant)
    set_state(acme.tenant, MIGRATING)
    return migration_start(tenant=acme.tenant, direction=Direction.TO_DEDICATED,
                           target_dek_id=target.pk)  # fmt: skip


def test_the_section_shows_usage_per_location_and_dek(acme: Any) -> None:
    object_put(tenant=acme.tenant, key="a", chunks=[b"x" * 2048])
    page = login(acme.viewer).get(section_url("acme"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "1 object, 2.0\xa0KB in all." in html
    assert "Shared (tenant prefix)" in html and "DEK v1 (active)" in html
    assert "No move under way." in html and "No moves yet." in html


def test_progress_polls_while_a_move_runs(acme: Any, moving: Any) -> None:
    response = login(acme.viewer).get(progress_url("acme"), headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'hx-trigger="every 1s"' in html and 'data-testid="object-migration-progress"' in html
    assert "0 of 3 objects copied" in html
    section = login(acme.viewer).get(section_url("acme")).content.decode()
    assert "To dedicated storage" in section and "Copying" in section


def test_the_banner_shows_the_moves_progress(acme: Any, moving: Any) -> None:
    page = login(acme.viewer).get("/t/acme/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Moving your data to your key" in html and "0 of 3 objects copied" in html


def test_access_rules(acme: Any, globex: Any, outsider: Any) -> None:
    assert login(globex.owner).get(progress_url("acme")).status_code == 404
    assert login(outsider).get(section_url("acme")).status_code == 404
    assert login(acme.viewer).post(progress_url("acme")).status_code == 405
    anonymous = login(acme.viewer)
    anonymous.logout()
    assert anonymous.get(progress_url("acme")).status_code == 302
