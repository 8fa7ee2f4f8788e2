"""Browser-facing defences on every URL: headers, session rotation, CSRF.

The URLs come from the authorization matrix's enumeration, so a new page is
checked here as soon as it has its row there.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from django.urls import reverse

from api.tokens import api_token_create
from audit.services import Actor
from tenants.models import Tenant
from tenants.sudo import SESSION_KEY as SUDO_SESSION_KEY
from tests.conftest import PASSWORD, TenantUsers, login
from tests.console.test_authorization_matrix import (
    API,
    CONSOLE,
    SCOPES,
    Fixed,
    TenantPage,
    api_methods,
    build_world,
    check,
    console_expected,
    project_routes,
    snapshot,
    url_for,
)
from tests.console.test_settings import run_manage

INLINE = {
    # A JSON data block (`json_script`) is data the browser never runs: allowed.
    "an inline script": re.compile(
        r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>\s*\S", re.I
    ),
    "an inline style block": re.compile(r"<style\b", re.I),
    "a style attribute": re.compile(r"<[^>]+\sstyle\s*=", re.I),
    "an event handler attribute": re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
    "a javascript: URL": re.compile(r"javascript:", re.I),
}


@pytest.fixture
def world(acme: TenantUsers, globex: TenantUsers, support: Any) -> dict[str, Any]:
    return build_world(acme, globex, support)


@pytest.fixture(scope="module")
def production_transport(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The HSTS settings that production mode computes, read from a production process."""
    env = {
        "KEYWARD_MODE": "production",
        "SECRET_KEY": "x" * 20 + "production-transport-settings-probe-" + "y" * 20,
        "DATABASE_URL": "postgres://keyward@127.0.0.1:5432/keyward",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "ALLOWED_HOSTS": "keyward.example.com",
        "KEYWARD_DATA_DIR": str(tmp_path_factory.mktemp("production")),
    }
    names = ["SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD"]
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    result = run_manage(env, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["SECURE_HSTS_SECONDS"] >= 31_536_000
    return values


@pytest.fixture
def as_production(settings: Any, production_transport: dict[str, Any]) -> None:
    for name, value in production_transport.items():
        setattr(settings, name, value)


def csp_directives(response: Any) -> dict[str, list[str]]:
    header = response.get("Content-Security-Policy", "")
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def header_problems(response: Any, *, html: bool) -> list[str]:
    problems = []
    csp = csp_directives(response)
    if not csp:
        problems.append("no Content-Security-Policy")
    for directive in ("script-src", "style-src"):
        sources = csp.get(directive, csp.get("default-src"))
        if not sources:
            problems.append(f"CSP has no {directive} (nor default-src)")
        elif "'unsafe-inline'" in sources or "'unsafe-eval'" in sources or "*" in sources:
            problems.append(f"CSP {directive} allows {' '.join(sources)}")
    if response.get("X-Frame-Options") != "DENY" and csp.get("frame-ancestors") != ["'none'"]:
        problems.append("framing is not denied")
    hsts = response.get("Strict-Transport-Security", "")
    if (
        not re.fullmatch(r"max-age=(\d+); includeSubDomains; preload", hsts)
        or int(hsts.split(";")[0].split("=")[1]) < 31_536_000
    ):
        problems.append(f"HSTS is {hsts!r}")
    if response.get("Referrer-Policy") not in ("same-origin", "no-referrer", "strict-origin"):
        problems.append(f"Referrer-Policy is {response.get('Referrer-Policy')!r}")
    if response.get("X-Content-Type-Options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    if html and "text/html" in response.get("Content-Type", ""):
        body = response.content.decode()
        problems += [f"the page has {what}" for what, rx in INLINE.items() if rx.search(body)]
    return problems


@pytest.mark.usefixtures("as_production")
def test_every_console_url_sends_the_security_headers(world: dict[str, Any]) -> None:
    client = login(world["acme"].owner, sudo=True)
    routes = project_routes()
    failures, checked = [], 0
    for name in sorted(CONSOLE, key=lambda n: n == "logout"):
        url = url_for(routes[name], world["args"])
        response = client.get(url, secure=True)
        checked += response.status_code == 200
        failures += [
            f"GET {url} ({response.status_code}): {p}" for p in header_problems(response, html=True)
        ]
    assert not failures, "\n".join(failures)
    assert checked >= 15  # the pages themselves, not only redirects and refusals


@pytest.mark.usefixtures("as_production")
def test_the_sign_in_page_and_error_pages_send_them_too(db: None) -> None:
    client = Client()
    for url in (reverse("login"), "/no/such/page/", reverse("console:home")):
        response = client.get(url, secure=True)
        assert header_problems(response, html=True) == [], url


@pytest.mark.usefixtures("as_production")
def test_every_api_response_sends_the_security_headers(world: dict[str, Any]) -> None:
    issued = api_token_create(
        tenant=world["acme"].tenant, actor=Actor.system("tests"), name="all", scopes=list(SCOPES)
    )
    headers = {"Authorization": f"Bearer {issued.text}"}
    client = Client()
    routes = project_routes()
    failures = []
    for name, row in API.items():
        url = url_for(routes[name], world["args"])
        for method in api_methods(row):
            response = client.generic(method, url, headers=headers, secure=True)
            failures += [f"{method} {url}: {p}" for p in header_problems(response, html=False)]
    # Refused before any view: no token at all.
    response = client.get(reverse("api:records"), secure=True)
    assert response.status_code == 401
    failures += header_problems(response, html=False)
    assert not failures, "\n".join(failures)


# Sessions.


def session_exists(key: str | None) -> bool:
    return key is not None and SessionStore().exists(key)


def test_signing_in_gives_a_new_session_id(acme: TenantUsers) -> None:
    client = Client()
    before = client.session.session_key  # an anonymous session, as a planted cookie would be
    assert before and session_exists(before)
    response = client.post(
        reverse("login"), {"username": acme.owner.username, "password": PASSWORD}
    )
    assert response.status_code == 302, response.content
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not session_exists(before)
    assert client.session.get("_auth_user_id") == str(acme.owner.pk)


def test_a_failed_sign_in_does_not_adopt_the_session(acme: TenantUsers) -> None:
    client = Client()
    before = client.session.session_key
    client.post(reverse("login"), {"username": acme.owner.username, "password": "wrong"})
    assert "_auth_user_id" not in client.session
    assert not session_exists(before) or client.session.session_key == before


def test_re_authentication_gives_a_new_session_id(acme: TenantUsers) -> None:
    client = login(acme.owner, sudo=False)
    before = client.session.session_key
    response = client.post(reverse("console:sudo"), {"password": PASSWORD, "next": "/"})
    assert response.status_code == 302, response.content
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not session_exists(before)
    assert SUDO_SESSION_KEY in client.session
    assert client.session.get("_auth_user_id") == str(acme.owner.pk)


def test_a_wrong_password_at_re_authentication_keeps_the_session(acme: TenantUsers) -> None:
    client = login(acme.owner, sudo=False)
    before = client.session.session_key
    client.post(reverse("console:sudo"), {"password": "wrong", "next": "/"})
    assert client.cookies[settings.SESSION_COOKIE_NAME].value == before
    assert SUDO_SESSION_KEY not in client.session


# CSRF.

HX_HEADERS = re.compile(r"""<body[^>]*\bhx-headers='([^']*)'""")


def post_urls(world: dict[str, Any]) -> list[tuple[str, str, TenantPage | Fixed]]:
    routes = project_routes()
    rows = sorted(CONSOLE.items(), key=lambda item: item[0] == "logout")  # signing out last
    return [
        (name, url_for(routes[name], world["args"]), row)
        for name, row in rows
        if (row.method == "POST" if isinstance(row, TenantPage) else "POST" in row.answers)
    ]


def csrf_client(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_every_console_post_is_refused_without_the_csrf_token(world: dict[str, Any]) -> None:
    client = csrf_client(world["acme"].owner)
    urls = post_urls(world)
    assert len(urls) >= 30
    failures = []
    for _name, url, _row in urls:
        before = snapshot()
        response = client.post(url, {"ttl": "600", "reason": "x"}, headers={"HX-Request": "true"})
        if response.status_code != 403:
            failures.append(f"POST {url}: {response.status_code} without a CSRF token")
        elif snapshot() != before:
            failures.append(f"POST {url}: refused, yet something changed")
    assert not failures, "\n".join(failures)
    # Signed out too: the sign-in form is no exception (login CSRF).
    anonymous = Client(enforce_csrf_checks=True)
    response = anonymous.post(reverse("login"), {"username": "a", "password": "b"})
    assert response.status_code == 403


def page_token(client: Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200
    found = HX_HEADERS.search(page.content.decode())
    assert found, f"{url} has no hx-headers on <body>"
    return str(json.loads(found.group(1))["X-CSRFToken"])


def test_every_console_post_passes_with_the_token_from_hx_headers(world: dict[str, Any]) -> None:
    client = csrf_client(world["acme"].owner)
    token = page_token(client, reverse("keys:overview", kwargs={"slug": "acme"}))
    failures = []
    for _name, url, row in post_urls(world):
        expected = console_expected(row, "POST", "owner")
        failure = check(
            client, url, "POST", expected, headers={"X-CSRFToken": token, "HX-Request": "true"}
        )
        if failure:
            failures.append(failure)
    assert not failures, "\n".join(failures)


def test_an_htmx_post_with_the_token_takes_effect(world: dict[str, Any]) -> None:
    client = csrf_client(world["acme"].owner)
    url = reverse("keys:set_cache_ttl", kwargs={"slug": "acme"})
    token = page_token(client, reverse("keys:overview", kwargs={"slug": "acme"}))
    refused = client.post(url, {"ttl": "777"}, headers={"HX-Request": "true"})
    assert refused.status_code == 403
    assert Tenant.objects.get(slug="acme").dek_cache_ttl != 777
    headers = {"X-CSRFToken": token, "HX-Request": "true"}
    response = client.post(url, {"ttl": "777"}, headers=headers)
    assert response.status_code in (200, 204, 302), response.content
    assert Tenant.objects.get(slug="acme").dek_cache_ttl == 777
