from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from api.models import ApiToken
from api.tokens import api_token_authenticate, api_token_revoke
from audit.models import AuditEvent
from audit.services import Actor
from tests.api.conftest import Api, issue


def test_only_the_prefix_and_a_hash_are_stored(acme) -> None:
    issued = issue(acme.tenant)
    _, prefix, secret = issued.text.split("_", 2)
    token = ApiToken.objects.get(pk=issued.token.pk)
    assert token.prefix == prefix
    assert bytes(token.secret_sha256) == hashlib.sha256(secret.encode()).digest()
    for value in ApiToken.objects.filter(pk=token.pk).values().get().values():
        assert secret not in str(value)
    assert secret not in repr(issued) and secret not in str(token)
    assert len(secret) == 43  # 256 bits, base64url


def test_creation_and_revocation_are_audited(acme) -> None:
    issued = issue(acme.tenant, name="billing sync")
    api_token_revoke(tenant=acme.tenant, token=issued.token, actor=Actor.system("tests"))
    create = AuditEvent.objects.get(tenant=acme.tenant, action="api_token.create")
    assert "billing sync" in create.target and issued.token.prefix in create.target
    assert create.details["scopes"] == ["records:read", "records:write"]
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="api_token.revoke").count() == 1
    for event in AuditEvent.objects.filter(tenant=acme.tenant):
        assert issued.text.split("_", 2)[2] not in str(event.details) + event.target


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic abc",
        "Bearer",
        "Bearer kw_nothing",
        "Bearer kw_000000000000_" + "A" * 43,  # unknown prefix
    ],
)
def test_missing_malformed_or_unknown_tokens_are_one_401(acme, api, header) -> None:
    client = Api(None)
    if header:
        client.headers = {"Authorization": header}
    response = client.get("records")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json() == Api(None).get("records").json()  # no oracle


def test_a_wrong_secret_is_401(acme) -> None:
    issued = issue(acme.tenant)
    wrong = issued.text[:-1] + ("A" if issued.text[-1] != "A" else "B")
    assert Api(wrong).get("records").status_code == 401
    assert Api(issued.text).get("records").status_code == 200


def test_revoked_and_expired_tokens_are_401(acme) -> None:
    revoked = issue(acme.tenant)
    api_token_revoke(tenant=acme.tenant, token=revoked.token, actor=Actor.system("tests"))
    expiring = issue(acme.tenant, expires_at=timezone.now() + timedelta(hours=1))
    assert Api(expiring.text).get("records").status_code == 200
    ApiToken.objects.filter(pk=expiring.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    for text in (revoked.text, expiring.text):
        response = Api(text).get("records")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_last_use_is_recorded_at_most_once_a_minute(acme, django_assert_max_num_queries) -> None:
    issued = issue(acme.tenant)
    assert issued.token.last_used_at is None
    assert api_token_authenticate(issued.text) is not None
    first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    assert first is not None
    assert api_token_authenticate(issued.text) is not None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first
    with django_assert_max_num_queries(1):  # the lookup only, no UPDATE
        api_token_authenticate(issued.text)
    ApiToken.objects.filter(pk=issued.token.pk).update(last_used_at=first - timedelta(minutes=2))
    api_token_authenticate(issued.text)
    touched = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    assert touched is not None and touched > first - timedelta(minutes=2)


def test_a_token_needs_the_endpoints_scope(acme, api_for) -> None:
    reader = api_for(acme.tenant, ["records:read"])
    writer = api_for(acme.tenant, ["records:write"])
    objects_only = api_for(acme.tenant, ["objects:read", "objects:write"])
    body = {"kind": "user", "external_id": "x", "fields": {}}
    forbidden = reader.post("records", body)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    created = writer.post("records", body)
    assert created.status_code == 201
    assert writer.get("records").status_code == 403
    assert writer.get(f"records/{created.json()['id']}").status_code == 403
    assert reader.get(f"records/{created.json()['id']}").status_code == 200
    assert reader.delete(f"records/{created.json()['id']}").status_code == 403
    assert objects_only.get("records").status_code == 403


def test_a_token_of_one_tenant_never_reaches_another(acme, globex, api_for) -> None:
    acme_api = api_for(acme.tenant)
    globex_api = api_for(globex.tenant)
    uid = acme_api.post("records", {"kind": "user", "external_id": "a", "fields": {}}).json()["id"]
    for response in (globex_api.get(f"records/{uid}"), globex_api.delete(f"records/{uid}")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert globex_api.get("records").json()["data"] == []
    assert acme_api.get(f"records/{uid}").status_code == 200
