"""The Audit streaming page: who may see and change it, and what bad input gets."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent, StreamDestination, StreamKind, StreamState
from audit.streaming.secrets import secret_of
from tests.conftest import TenantUsers, login

SYSLOG = {"kind": "syslog", "host": "127.0.0.1", "port": "6514"}


def url(name: str, slug: str = "acme") -> str:
    return reverse(f"audit:{name}", args=[slug])


def save(client: Any, **data: str) -> Any:
    return client.post(url("stream_save"), data)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


@pytest.mark.parametrize("role", ["owner", "key_admin", "auditor"])
def test_roles_that_read_the_trail_see_the_streaming_status(acme: TenantUsers, role: str) -> None:
    response = login(getattr(acme, role)).get(url("stream"))
    assert response.status_code == 200
    assert 'data-testid="stream-status"' in response.content.decode()
    shows_form = 'data-testid="stream-form"' in response.content.decode()
    assert shows_form == (role == "owner")


def test_viewer_and_other_tenant_cannot_see_it(acme: TenantUsers, globex: TenantUsers) -> None:
    assert login(acme.viewer).get(url("stream")).status_code == 403
    assert login(globex.owner).get(url("stream")).status_code == 404


@pytest.mark.parametrize("role", ["key_admin", "auditor", "viewer"])
def test_only_owners_configure(acme: TenantUsers, allow_loopback: None, role: str) -> None:
    client = login(getattr(acme, role), sudo=True)
    assert save(client, **SYSLOG).status_code == 403
    assert client.post(url("stream_resume")).status_code == 403
    assert client.post(url("stream_remove")).status_code == 403
    assert not StreamDestination.objects.exists()


def test_changing_the_destination_needs_the_password_again(
    acme: TenantUsers, allow_loopback: None
) -> None:
    response = save(login(acme.owner, sudo=False), **SYSLOG)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:sudo"))
    assert not StreamDestination.objects.exists()


def test_wrong_method(acme: TenantUsers) -> None:
    client = login(acme.owner, sudo=True)
    assert client.get(url("stream_save")).status_code == 405
    assert client.post(url("stream")).status_code == 405


# (form data, the field the message is on, part of the message)
BAD_INPUT: list[tuple[dict[str, str], str, str]] = [
    ({"kind": "syslog", "host": "", "port": "6514"}, "host", "Enter the syslog server"),
    ({"kind": "syslog", "host": "siem.example", "port": "0"}, "port", "greater than or"),
    ({"kind": "syslog", "host": "siem.example", "port": "70000"}, "port", "less than or"),
    ({"kind": "syslog", "host": "siem.example", "port": "x"}, "port", "whole number"),
    ({"kind": "syslog", "host": "tls://siem.example", "port": "6514"}, "host", "only the host"),
    ({"kind": "webhook", "url": ""}, "url", "Enter the webhook"),
    ({"kind": "webhook", "url": "http://siem.example/in"}, "url", "must be an https://"),
    ({"kind": "webhook", "url": "https://"}, "url", "no host name"),
    ({"kind": "webhook", "url": "https://a b.example/"}, "url", "must not contain spaces"),
    ({"kind": "webhook", "url": "https://u:p@siem.example/"}, "url", "credentials"),
    ({"kind": "webhook", "url": "https://siem.example:99999/"}, "url", "not valid"),
    ({"kind": "carrier-pigeon", "url": "https://siem.example/"}, "kind", "valid choice"),
    ({"kind": "syslog", "host": "127.0.0.1", "port": "6514"}, "host", "a loopback address"),
    ({"kind": "syslog", "host": "10.1.2.3", "port": "6514"}, "host", "a private network"),
    ({"kind": "webhook", "url": "https://169.254.169.254/"}, "url", "link-local"),
    ({"kind": "webhook", "url": "https://[::1]:8443/"}, "url", "a loopback address"),
    (
        {"kind": "syslog", "host": "8.8.8.8", "port": "6514", "ca_pem": "not a certificate"},
        "ca_pem",
        "PEM certificates",
    ),
    (
        {
            "kind": "syslog",
            "host": "8.8.8.8",
            "port": "6514",
            "ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        },
        "ca_pem",
        "cannot be read",
    ),
]


def test_bad_input_is_refused_and_changes_nothing(acme: TenantUsers) -> None:
    client = login(acme.owner, sudo=True)
    before = AuditEvent.objects.count()
    for data, field, message in BAD_INPUT:
        response = save(client, **data)
        assert response.status_code == 400, data
        errors = response.context["form"].errors
        assert field in errors, (data, errors)
        assert message in " ".join(errors[field]), (data, errors)
        assert message in response.content.decode().replace("&#x27;", "'"), data
    assert not StreamDestination.objects.exists()
    assert AuditEvent.objects.count() == before


def test_private_addresses_only_where_the_operator_allows(acme: TenantUsers, settings: Any) -> None:
    client = login(acme.owner, sudo=True)
    settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = ["globex:10.0.0.0/8"]
    assert save(client, kind="syslog", host="10.1.2.3", port="6514").status_code == 400
    settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = ["acme:10.0.0.0/8"]
    assert save(client, kind="syslog", host="10.1.2.3", port="6514").status_code == 302
    assert StreamDestination.objects.get().address == "10.1.2.3:6514"


def test_the_webhook_secret_is_shown_once_then_never(
    acme: TenantUsers, allow_loopback: None
) -> None:
    client = login(acme.owner, sudo=True)
    response = save(client, kind="webhook", url="https://127.0.0.1:8443/in")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    assert secret.startswith("kwhs_") and len(secret) > 40
    assert secret in response.content.decode()

    destination = StreamDestination.objects.get()
    # Stored sealed, never in clear: the row's bytes do not contain it.
    assert secret.encode() not in bytes(destination.sealed_secret or b"")
    assert secret_of(destination) == secret.encode()
    for event in events("audit.stream_configure"):
        assert secret not in str(event.details) + event.target
    for page in ("stream", "list"):
        assert secret not in client.get(url(page)).content.decode()

    # Saved again without asking for a new one: the same secret, not shown.
    response = save(client, kind="webhook", url="https://127.0.0.1:8443/other")
    assert response.status_code == 302
    destination.refresh_from_db()
    assert secret_of(destination) == secret.encode()
    # Asked for: a new one, shown once.
    response = save(client, kind="webhook", url="https://127.0.0.1:8443/other", new_secret="on")
    fresh = response.context["secret"]
    assert fresh != secret
    destination.refresh_from_db()
    assert secret_of(destination) == fresh.encode()
    assert [e.details["secret"] for e in events("audit.stream_configure")] == [
        "new",
        "kept",
        "new",
    ]


def test_configure_is_audited_with_the_real_actor(acme: TenantUsers, allow_loopback: None) -> None:
    response = save(login(acme.owner, sudo=True), **SYSLOG)
    assert response.status_code == 302
    (event,) = events("audit.stream_configure")
    assert event.actor_display == "owner@acme.test (Owner)"
    assert event.target == "127.0.0.1:6514"
    assert event.details["kind"] == "syslog"
    destination = StreamDestination.objects.get()
    assert destination.kind == StreamKind.SYSLOG
    assert destination.sealed_secret is None


def test_resume_and_remove(acme: TenantUsers, allow_loopback: None) -> None:
    client = login(acme.owner, sudo=True)
    # Nothing to resume or remove yet: a message, no change.
    client.post(url("stream_resume"))
    assert not events("audit.stream_resume")
    save(client, **SYSLOG)
    destination = StreamDestination.objects.get()
    destination.state = StreamState.PAUSED
    destination.cursor = 7
    destination.failures = 10
    destination.save()
    response = client.post(url("stream_resume"))
    assert response.status_code == 302
    destination.refresh_from_db()
    assert (destination.state, destination.cursor, destination.failures) == ("active", 7, 0)
    assert events("audit.stream_resume")[0].details == {"from_seq": 8}
    # Not paused any more: refused with a message.
    response = client.post(url("stream_resume"), follow=True)
    assert "not paused" in response.content.decode()
    assert len(events("audit.stream_resume")) == 1

    assert client.post(url("stream_remove")).status_code == 302
    assert not StreamDestination.objects.exists()
    assert events("audit.stream_remove")[0].details == {"delivered_to": 7}


def test_the_trail_links_to_streaming_with_its_state(acme: TenantUsers) -> None:
    client = login(acme.auditor)

    def link() -> str:
        body = client.get(url("list")).content.decode()
        start = body.index('data-testid="stream-link"')
        return body[body.index(">", start) + 1 : body.index("</a>", start)]

    assert link() == "Streaming: off"
    destination = StreamDestination.objects.create(
        tenant=acme.tenant, kind=StreamKind.SYSLOG, host="siem.acme.test", port=6514
    )
    assert link() == "Streaming: on"
    destination.state = StreamState.PAUSED
    destination.save()
    assert link() == "Streaming: paused"
