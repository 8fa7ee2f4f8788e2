from __future__ import annotations

from django.templatetags.static import static
from django.test import Client

from tests.conftest import login


def test_favicon_ico_leads_to_the_svg_icon(db) -> None:
    client = Client()
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == static("img/favicon.svg")
    icon = client.get(response["Location"])
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    svg = b"".join(icon.streaming_content)  # type: ignore[attr-defined]
    assert svg.startswith(b'<svg xmlns="http://www.w3.org/2000/svg"')
    assert svg.rstrip().endswith(b"</svg>") and len(svg) < 1024
    assert client.head("/favicon.ico").status_code == 302


def test_favicon_ico_refuses_writes(db) -> None:
    assert Client().post("/favicon.ico").status_code == 405


def test_every_page_links_the_icon(acme) -> None:
    link = f'<link rel="icon" href="{static("img/favicon.svg")}" type="image/svg+xml">'
    assert link in login(acme.viewer).get("/t/acme/").content.decode()
    assert link in Client().get("/login/").content.decode()
