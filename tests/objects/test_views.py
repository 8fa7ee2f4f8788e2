from __future__ import annotations

from typing import Any

import pytest

from objects.migration import migration_start
from objects.models import Direction, MigrationState
from objects.services import object_put
from tenants.models import ServiceState
from tests.conftest import login
from tests.objects.conftest import MIGRATING, new_target_dek, set_state

pytestmark = pytest.mark.urls("tests.objects.urls")


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
    assert "hx-trigger" not in html  # nothing to follow, nothing polls


def test_the_section_polls_itself_while_a_move_runs_and_stops_after(acme: Any, moving: Any) -> None:
    response = login(acme.viewer).get(section_url("acme"), headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'hx-get="{section_url("acme")}" hx-trigger="every 1s"' in html
    assert 'data-testid="object-migration-progress"' in html
    assert "0 of 3 objects copied" in html
    assert "To dedicated storage" in html and "Copying" in html
    type(moving).objects.filter(pk=moving.pk).update(state=MigrationState.DONE)
    set_state(acme.tenant, ServiceState.BYOK_ACTIVE)  # as the move's finish does
    done = login(acme.viewer).get(section_url("acme")).content.decode()
    assert "hx-trigger" not in done and "No move under way." in done and "Done" in done


def test_the_section_follows_a_key_move_before_its_object_move_exists(acme: Any) -> None:
    set_state(acme.tenant, MIGRATING)
    html = login(acme.viewer).get(section_url("acme")).content.decode()
    assert 'hx-trigger="every 1s"' in html
    assert "Your data keys are moving first; the objects follow." in html


def test_a_failed_moves_error_is_shown_to_key_managers_only(acme: Any, moving: Any) -> None:
    type(moving).objects.filter(pk=moving.pk).update(
        state=MigrationState.FAILED, error="3 objects did not verify."
    )
    owner = login(acme.owner).get(section_url("acme")).content.decode()
    assert 'data-testid="object-migration-failed"' in owner
    assert "3 objects did not verify." in owner and 'data-testid="retry-migration"' in owner
    viewer = login(acme.viewer).get(section_url("acme")).content.decode()
    assert "3 objects did not verify." not in viewer and "retry-migration" not in viewer


def test_the_banner_shows_the_moves_progress(acme: Any, moving: Any) -> None:
    page = login(acme.viewer).get("/t/acme/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Moving your data to your key" in html and "0 of 3 objects copied" in html


def test_access_rules(acme: Any, globex: Any, outsider: Any) -> None:
    assert login(globex.owner).get(section_url("acme")).status_code == 404
    assert login(outsider).get(section_url("acme")).status_code == 404
    assert login(acme.viewer).post(section_url("acme")).status_code == 405
    anonymous = login(acme.viewer)
    anonymous.logout()
    assert anonymous.get(section_url("acme")).status_code == 302
