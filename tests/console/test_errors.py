"""Error pages: 403 and 404 in the console's layout, a plain 500, one log line per refusal."""

from __future__ import annotations

import html
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse

from console.logs import ClientErrorWithoutTraceback
from tests.conftest import login


def templates(response: Any) -> list[str]:
    return [t.name for t in response.templates]


def back_link(response: Any) -> str:
    body = response.content.decode()
    start = body.index('data-testid="error-back"')
    return html.unescape(body[body.rindex("<a ", 0, start) : body.index("</a>", start) + 4])


def test_error_pages_are_tested_with_debug_off() -> None:
    assert settings.DEBUG is False  # Django shows its technical pages otherwise


def test_a_404_in_a_tenant_is_a_console_page_linking_to_its_overview(acme) -> None:
    response = login(acme.viewer).get("/t/acme/no-such-page/")
    assert response.status_code == 404
    assert {"console/404.html", "base.html"} <= set(templates(response))
    body = response.content.decode()
    assert "<h1>Page not found</h1>" in body
    assert 'href="/t/acme/"' in back_link(response)
    assert "Back to Acme's overview" in back_link(response)
    assert 'aria-label="Acme"' in body  # the tenant's tabs, like its other pages


def test_a_404_in_a_tenant_the_user_may_not_see_links_home_and_names_nothing(
    acme, globex, outsider
) -> None:
    for client in (login(acme.owner), login(outsider)):
        response = client.get("/t/globex/keys/")
        assert response.status_code == 404
        assert "console/404.html" in templates(response)
        assert 'href="/"' in back_link(response)
        assert "Globex" not in response.content.decode()


def test_a_404_outside_any_tenant_links_home(db) -> None:
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    assert "console/404.html" in templates(response)
    assert 'href="/"' in back_link(response)
    assert "Back to the console home" in back_link(response)


def test_a_403_is_a_console_page_linking_to_the_tenant_overview(acme, support) -> None:
    for user in (acme.viewer, support):
        response = login(user).get(reverse("audit:list", args=["acme"]))
        assert response.status_code == 403
        assert {"console/403.html", "base.html"} <= set(templates(response))
        body = response.content.decode()
        assert "<h1>Not allowed</h1>" in body
        assert "Your access to Acme does not allow this page or action." in body
        assert 'href="/t/acme/"' in back_link(response)


def test_a_refused_request_is_one_warning_without_a_traceback(acme, caplog) -> None:
    caplog.set_level(logging.INFO, logger="django.request")
    response = login(acme.viewer).get(reverse("audit:list", args=["acme"]))
    assert response.status_code == 403
    records = [r for r in caplog.records if r.name == "django.request"]
    assert len(records) == 1
    (entry,) = records
    assert entry.levelno == logging.WARNING
    assert entry.getMessage() == "Forbidden (Permission denied): /t/acme/audit/"
    assert entry.exc_info is None and entry.exc_text is None
    assert "Traceback" not in caplog.text


@pytest.fixture
def console_output() -> Iterator[io.StringIO]:
    """What the configured console handler prints, captured."""
    (handler,) = [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, ClientErrorWithoutTraceback) for f in h.filters)
    ]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


def test_the_log_shows_one_line_for_a_403_and_a_suspicious_400(acme, console_output) -> None:
    login(acme.viewer).get(reverse("audit:list", args=["acme"]))
    assert Client().get("/", headers={"host": "evil.example"}).status_code == 400
    lines = [json.loads(line) for line in console_output.getvalue().splitlines()]
    refusals = [line for line in lines if line.get("event") != "request"]
    assert [(line["level"], line["logger"]) for line in refusals] == [
        ("WARNING", "django.request"),
        ("ERROR", "django.security.DisallowedHost"),
    ], lines
    assert refusals[0]["message"].startswith("Forbidden (Permission denied)")
    assert refusals[1]["message"].startswith("Invalid HTTP_HOST header")
    # Besides them, the one line per request.
    assert [line["status"] for line in lines if line.get("event") == "request"] == [403, 400]
    assert not any("exception" in line for line in lines)
    assert "Traceback" not in console_output.getvalue()


def test_a_server_error_keeps_its_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "boom", (), exc_info)
    record.status_code = 500
    assert ClientErrorWithoutTraceback().filter(record)
    assert record.exc_info is exc_info


def boom(request: Any) -> Any:
    raise RuntimeError("the database went away")


@override_settings(ROOT_URLCONF="tests.console.urls")
def test_a_500_is_a_plain_page_that_needs_nothing(db) -> None:
    response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    assert templates(response) == ["console/500.html"]
    body = response.content.decode()
    assert "<h1>Something went wrong</h1>" in body
    assert 'href="/"' in body
    assert "the database went away" not in body


@override_settings(ROOT_URLCONF="tests.console.urls")
def test_a_500_under_the_api_is_the_json_error_model(db) -> None:
    response = Client(raise_request_exception=False).post("/api/v1/boom")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "server_error"
