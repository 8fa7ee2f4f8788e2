"""No page runs past the window at desktop (1280 px) and phone (390 px) widths."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Page

from records.services import records_create
from records.synthetic import synthetic_records
from tests.conftest import PASSWORD, make_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Elements that reach past the window (clipped ones too), for the failure message.
_CULPRITS = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(-5).map(e => e.outerHTML.slice(0, 70))"""

PAGES = (
    "console:dashboard",
    "keys:overview",
    "keys:upload",
    "keys:aws",
    "keys:azure",
    "keys:kmip",
    "keys:rotation",
    "data:overview",
    "audit:list",
    "tenants:members",
)


def test_every_page_fits_the_window_at_1280_and_390_px(
    page: Page, sign_in: Any, live_server: Any
) -> None:
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(5)))
    sign_in(acme.owner.username, PASSWORD)
    overflowing = []
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for name in PAGES:
            page.goto(f"{live_server.url}{reverse(name, args=['acme'])}")
            sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            if sizes[0] > sizes[1]:
                culprits = page.evaluate(_CULPRITS)
                overflowing.append(f"{name} at {width} px: {sizes[0]} > {sizes[1]} ({culprits})")
        page.goto(f"{live_server.url}/")
    assert overflowing == [], "\n".join(overflowing)
