from __future__ import annotations

import pytest

from api.models import ApiToken
from audit.models import AuditEvent
from tests.api.conftest import Api, issue
from tests.conftest import login

FORM = {"name": "billing sync", "scopes": ["records:read", "records:write"]}


def url(slug: str, path: str = "") -> str:
    return f"/t/{slug}/data/{path}"


def test_an_owner_creates_a_token_shown_exactly_once(acme) -> None:
    client = login(acme.owner, sudo=True)
    response = client.post(url("acme", "tokens/"), FORM)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(tenant=acme.tenant)
    text = response.context["issued"].text
    assert text.startswith(f"kw_{token.prefix}_") and text in response.content.decode()
    assert Api(text).get("records").status_code == 200
    page = client.get(url("acme"))
    assert text not in page.content.decode()
    assert f"kw_{token.prefix}_" in page.content.decode()
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="api_token.create").count() == 1


def test_creation_needs_sudo(acme) -> None:
    response = login(acme.owner).post(url("acme", "tokens/"), FORM)
    assert response.status_code == 302 and "/sudo/" in response["Location"]
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("role", ["key_admin", "auditor", "viewer"])
def test_other_roles_see_the_list_but_cannot_create_or_revoke(acme, role) -> None:
    issued = issue(acme.tenant)
    client = login(getattr(acme, role), sudo=True)
    page = client.get(url("acme"))
    assert page.status_code == 200
    html = page.content.decode()
    assert issued.token.prefix in html and 'data-testid="token-form"' not in html
    assert "Revoke" not in html
    assert client.post(url("acme", "tokens/"), FORM).status_code == 403
    revoke = url("acme", f"tokens/{issued.token.pk}/revoke/")
    assert client.post(revoke).status_code == 403
    assert client.post(url("acme", "lookup-key/rotate/")).status_code == 403
    assert ApiToken.objects.count() == 1 and ApiToken.objects.get().revoked_at is None


def test_another_tenant_and_outsiders_get_404(acme, globex, outsider) -> None:
    issued = issue(acme.tenant)
    for client in (login(globex.owner, sudo=True), login(outsider, sudo=True)):
        assert client.get(url("acme")).status_code == 404
        assert client.post(url("acme", "tokens/"), FORM).status_code == 404
        assert client.post(url("acme", f"tokens/{issued.token.pk}/revoke/")).status_code == 404
    # globex's owner cannot revoke acme's token through globex's URL either
    other = login(globex.owner, sudo=True)
    assert other.post(url("globex", f"tokens/{issued.token.pk}/revoke/")).status_code == 404


def test_wrong_methods_are_405(acme) -> None:
    client = login(acme.owner, sudo=True)
    assert client.get(url("acme", "tokens/")).status_code == 405
    assert client.post(url("acme")).status_code == 405


def test_an_owner_revokes_and_the_token_stops_working(acme) -> None:
    issued = issue(acme.tenant)
    client = login(acme.owner, sudo=True)
    assert (
        login(acme.owner).post(url("acme", f"tokens/{issued.token.pk}/revoke/")).status_code == 302
    )
    assert ApiToken.objects.get().revoked_at is None  # that one had no sudo: sent to /sudo/
    response = client.post(url("acme", f"tokens/{issued.token.pk}/revoke/"))
    assert response.status_code == 302
    assert ApiToken.objects.get().revoked_at is not None
    assert Api(issued.text).get("records").status_code == 401
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="api_token.revoke").count() == 1
    assert "revoked" in client.get(url("acme")).content.decode()


def test_the_page_shows_last_use_and_records_per_data_key(acme) -> None:
    issued = issue(acme.tenant)
    client = Api(issued.text)
    for i in range(3):
        client.post(
            "records", {"kind": "user", "external_id": f"u{i}", "fields": {"email": "a@b.c"}}
        )
    html = login(acme.viewer).get(url("acme")).content.decode()
    assert 'data-testid="last-used">never' not in html
    assert "3 records in all" in html


def test_invalid_forms_are_400_and_create_nothing(acme) -> None:
    client = login(acme.owner, sudo=True)
    for data in (
        {"name": "", "scopes": ["records:read"]},
        {"name": "x"},
        {**FORM, "expires_on": "2000-01-01"},
        {**FORM, "scopes": ["root"]},
    ):
        assert client.post(url("acme", "tokens/"), data).status_code == 400
    assert not ApiToken.objects.exists()


def test_an_expiry_day_ends_the_token_at_its_end(acme) -> None:
    client = login(acme.owner, sudo=True)
    assert (
        client.post(url("acme", "tokens/"), {**FORM, "expires_on": "2999-12-31"}).status_code == 200
    )
    expires = ApiToken.objects.get().expires_at
    assert expires is not None and (expires.year, expires.hour, expires.minute) == (2999, 23, 59)


def test_an_owner_rotates_the_lookup_key(acme, settings) -> None:
    from records.models import IndexKey

    client = Api(issue(acme.tenant).text)
    client.post("records", {"kind": "user", "external_id": "u", "fields": {"email": "a@b.c"}})
    response = login(acme.owner, sudo=True).post(url("acme", "lookup-key/rotate/"))
    assert response.status_code == 302
    assert IndexKey.objects.filter(tenant=acme.tenant, version=2, state="building").exists()


def test_the_page_says_what_lookup_entries_reveal(acme) -> None:
    body = login(acme.viewer).get("/t/acme/data/").content.decode()
    assert 'data-testid="lookup-leakage"' in body
    assert "equal values have equal entries" in body
    assert "stay until the keys are destroyed" in body
