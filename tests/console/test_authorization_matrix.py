"""Every URL of the project, for every actor, against a declared table.

The console's tenant pages declare the permission their view asks for; the
expected answer of each role follows from `ROLE_PERMS` and `SUPPORT_PERMS`.
The API's endpoints declare the scope of each method. A URL added without a
row here fails `test_every_url_has_a_row`. A refused request changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from api.tokens import api_token_create
from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, KeySource
from tenants.access import access_request_create
from tenants.models import Membership, Tenant
from tenants.permissions import ROLE_PERMS, SUPPORT_PERMS, Perm
from tenants.services import invitation_create
from tests.conftest import TenantUsers, login

# Expected answers, as classes.
OK = "allowed"  # 2xx/3xx not to the sign-in page, or a validation error after authorization
LOGIN = "login redirect"
SUDO = "re-authentication redirect"
E401, E403, E404, E405 = "401", "403", "404", "405"

METHODS = ("GET", "POST")

# Console actors: the four roles of acme, globex's owner, vendor support, nobody.
ROLES = ("owner", "key_admin", "auditor", "viewer")
OTHER_TENANT = "globex_owner"
SUPPORT = "support"
ANONYMOUS = "anonymous"
# Signed in a while ago: the password has to be entered again for a change.
NO_SUDO = {"owner_without_sudo": "owner", "viewer_without_sudo": "viewer"}
CONSOLE_ACTORS = (*ROLES, OTHER_TENANT, SUPPORT, ANONYMOUS, *NO_SUDO)

# API actors: a token of each scope, no token, a signed-in owner's session.
SCOPES = ("records:read", "records:write", "objects:read", "objects:write", "audit:read")
NO_TOKEN = "no token"
SESSION = "owner session"
API_ACTORS = (*SCOPES, NO_TOKEN, SESSION)


@dataclass(frozen=True)
class TenantPage:
    """A page under /t/<slug>/: login, then the method, then the permission."""

    perm: Perm
    method: str  # the one method the view takes
    # Behind recent re-authentication, asked for after the permission.
    sudo: bool = False


@dataclass(frozen=True)
class Fixed:
    """A URL outside the tenant permission scheme: its answers, spelled out."""

    answers: dict[str, dict[str, str]]  # method → actor → class (default: "*")

    def expected(self, method: str, actor: str) -> str:
        by_actor = self.answers[method]
        return by_actor.get(actor, by_actor["*"])


@dataclass(frozen=True)
class ApiEndpoint:
    """An endpoint of /api/v1/: the scope of each method it takes."""

    scopes: dict[str, str]
    # What an authorized request answers, where not "allowed": 404 where the
    # URL names no existing row.
    authorized: dict[str, str] = field(default_factory=dict)


def _signed_in(answer: str) -> dict[str, str]:
    return {"*": answer, ANONYMOUS: LOGIN}


def _support_only(answer: str) -> dict[str, str]:
    return {"*": E404, SUPPORT: answer}


SUPPORT_ACTIONS = ("health_check", "retry_move", "remind_rotation", "addon_enable", "addon_disable")
# What support may never do: change, revoke, restore, destroy or remove a key.
KEY_CHANGING = (
    "keys:aws_save_and_test",
    "keys:azure_save_and_test",
    "keys:kmip_save_and_test",
    "keys:test_source",
    "keys:enable_source",
    "keys:upload_key",
    "keys:rotation_confirm",
    "keys:rotation_reject",
    "keys:revoke",
    "keys:restore",
    "keys:destroy",
    "keys:cancel_destroy",
    "keys:remove_byok",
    "keys:rotate_kek",
    "keys:switch_source",
    "keys:rotate_dek",
)


def _own_factor(answer: str) -> dict[str, str]:
    """Changing one's own factors: signed in, and in sudo mode."""
    return {**_signed_in(answer), **dict.fromkeys(NO_SUDO, SUDO)}


CONSOLE: dict[str, TenantPage | Fixed] = {
    # Outside any tenant.
    "console:home": Fixed({"GET": _signed_in(OK), "POST": _signed_in(E405)}),
    "console:sudo": Fixed({"GET": _signed_in(OK), "POST": _signed_in(OK)}),
    "login": Fixed({"GET": {"*": OK}, "POST": {"*": OK}}),
    # Signing out lands on the sign-in page; the matrix runs it last.
    "logout": Fixed({"GET": {"*": E405}, "POST": {"*": LOGIN}}),
    "healthz": Fixed({"GET": {"*": OK}, "POST": {"*": E405}}),
    # No session opens it: without KEYWARD_METRICS_TOKEN (the suite's default) it
    # does not exist; with it, only the bearer token (tests/console/test_metrics.py).
    "metrics": Fixed({"GET": {"*": E404}, "POST": {"*": E404}}),
    # The emailed link: its token is the only credential, so a made-up token
    # is a 404 for anyone, signed in or not.
    "tenants:join": Fixed({"GET": {"*": E404}, "POST": {"*": E404}}),
    # The shell.
    "console:dashboard": TenantPage(Perm.VIEW_STATUS, "GET"),
    "console:live": TenantPage(Perm.VIEW_STATUS, "GET"),
    # Members.
    "tenants:members": TenantPage(Perm.MANAGE_MEMBERS, "GET"),
    "tenants:change_role": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "tenants:remove": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "tenants:invite": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "tenants:revoke_invite": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "tenants:second_factor_setting": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    # The second step of signing in: nothing to do without a right password
    # first, signed in or not.
    "mfa:verify": Fixed({"GET": {"*": LOGIN}, "POST": {"*": LOGIN}}),
    "mfa:enrol_sign_in": Fixed({"GET": {"*": LOGIN}, "POST": {"*": LOGIN}}),
    # One's own second factors: anyone signed in, changes behind sudo mode.
    "mfa:factors": Fixed({"GET": _signed_in(OK), "POST": _signed_in(E405)}),
    "mfa:totp_add": Fixed({"GET": _own_factor(OK), "POST": _own_factor(OK)}),
    "mfa:webauthn_add": Fixed({"GET": _own_factor(OK), "POST": _own_factor(OK)}),
    "mfa:recovery_codes": Fixed({"GET": _signed_in(E405), "POST": _own_factor(OK)}),
    "mfa:remove": Fixed({"GET": _signed_in(E405), "POST": _own_factor(OK)}),
    # Audit.
    "audit:list": TenantPage(Perm.VIEW_AUDIT, "GET"),
    "audit:export_csv": TenantPage(Perm.EXPORT_AUDIT, "GET"),
    "audit:export_jsonl": TenantPage(Perm.EXPORT_AUDIT, "GET"),
    "audit:stream": TenantPage(Perm.VIEW_AUDIT, "GET"),
    "audit:stream_save": TenantPage(Perm.CONFIGURE_AUDIT_STREAM, "POST", sudo=True),
    "audit:stream_resume": TenantPage(Perm.CONFIGURE_AUDIT_STREAM, "POST", sudo=True),
    "audit:stream_remove": TenantPage(Perm.CONFIGURE_AUDIT_STREAM, "POST", sudo=True),
    # Keys.
    "keys:overview": TenantPage(Perm.VIEW_STATUS, "GET"),
    "keys:rotate_dek": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:set_cache_ttl": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:enable_progress": TenantPage(Perm.VIEW_STATUS, "GET"),
    "keys:aws": TenantPage(Perm.MANAGE_KEYS, "GET"),
    "keys:aws_save_and_test": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:azure": TenantPage(Perm.MANAGE_KEYS, "GET"),
    "keys:azure_save_and_test": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:kmip": TenantPage(Perm.MANAGE_KEYS, "GET"),
    "keys:kmip_save_and_test": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:test_source": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:enable_source": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:upload": TenantPage(Perm.MANAGE_KEYS, "GET"),
    # Parameters to wrap a key with: nothing changes, so no password is asked.
    "keys:import_parameters": TenantPage(Perm.MANAGE_KEYS, "POST"),
    "keys:upload_key": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:rotation": TenantPage(Perm.MANAGE_KEYS, "GET"),
    "keys:rotation_confirm": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:rotation_reject": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:revoke": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:restore": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:destroy": TenantPage(Perm.DESTROY_KEYS, "POST", sudo=True),
    "keys:cancel_destroy": TenantPage(Perm.DESTROY_KEYS, "POST", sudo=True),
    "keys:remove_byok": TenantPage(Perm.REMOVE_BYOK, "POST", sudo=True),
    "keys:rotate_kek": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "keys:switch_source": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "records:reencrypt": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    "records:reencrypt_progress": TenantPage(Perm.VIEW_STATUS, "GET"),
    # Data.
    "data:overview": TenantPage(Perm.VIEW_STATUS, "GET"),
    "data:token_create": TenantPage(Perm.MANAGE_API_TOKENS, "POST", sudo=True),
    "data:token_revoke": TenantPage(Perm.MANAGE_API_TOKENS, "POST", sudo=True),
    "data:lookup_key_rotate": TenantPage(Perm.MANAGE_API_TOKENS, "POST", sudo=True),
    "objects:section": TenantPage(Perm.VIEW_STATUS, "GET"),
    "objects:migration_retry": TenantPage(Perm.MANAGE_KEYS, "POST", sudo=True),
    # Asking for the BYOK add-on changes no key: no password asked.
    "keys:request_addon": TenantPage(Perm.MANAGE_KEYS, "POST"),
    # The support console: vendor staff only, a 404 for anyone else (even signed out,
    # and whatever the method, so that it does not tell it exists).
    "support:list": Fixed({"GET": _support_only(OK), "POST": _support_only(E405)}),
    "support:tenant": Fixed({"GET": _support_only(OK), "POST": _support_only(E405)}),
    **{
        f"support:{action}": Fixed({"GET": _support_only(E405), "POST": _support_only(OK)})
        for action in SUPPORT_ACTIONS
    },
    # Vendor support's access, the tenant's side. Answering is for approvers: in
    # this world (nobody named), the owners, who hold MANAGE_MEMBERS.
    "access:page": TenantPage(Perm.VIEW_AUDIT, "GET"),
    "access:settings": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "access:approve": TenantPage(Perm.MANAGE_MEMBERS, "POST", sudo=True),
    "access:deny": TenantPage(Perm.MANAGE_MEMBERS, "POST"),
    "access:end": TenantPage(Perm.MANAGE_MEMBERS, "POST"),
    # Vendor support's side: 404 for everyone else; reading without a grant is 403.
    "lockbox:request": Fixed(
        {
            "GET": {"*": E404, SUPPORT: OK, ANONYMOUS: LOGIN},
            "POST": {"*": E404, SUPPORT: OK, ANONYMOUS: LOGIN},
        }
    ),
    "lockbox:data": Fixed(
        {"GET": {"*": E404, SUPPORT: E403, ANONYMOUS: LOGIN}, "POST": _signed_in(E405)}
    ),
    "lockbox:object": Fixed(
        {"GET": {"*": E404, SUPPORT: E403, ANONYMOUS: LOGIN}, "POST": _signed_in(E405)}
    ),
}

API: dict[str, ApiEndpoint | Fixed] = {
    "api:openapi": Fixed({"GET": {"*": OK}, "POST": {"*": E405}}),
    "api:audit_events": ApiEndpoint({"GET": "audit:read"}),
    "api:records": ApiEndpoint({"GET": "records:read", "POST": "records:write"}),
    "api:records_batch": ApiEndpoint({"POST": "records:write"}),
    "api:record": ApiEndpoint(
        {"GET": "records:read", "DELETE": "records:write"},
        authorized={"GET": E404, "DELETE": E404},
    ),
    "api:object": ApiEndpoint(
        {
            "GET": "objects:read",
            "HEAD": "objects:read",
            "PUT": "objects:write",
            "DELETE": "objects:write",
        },
        # Reading an object that was never stored; PUT stores it, DELETE is idempotent.
        authorized={"GET": E404, "HEAD": E404},
    ),
}

# Left out: the admin has its own tests (tests/console/test_admin.py).
SKIPPED_PREFIXES = ("admin/",)
SKIPPED_NAMES = {"favicon"}


@dataclass(frozen=True)
class Route:
    name: str
    converters: tuple[tuple[str, str], ...]  # (argument, converter class name)


def _walk(
    patterns: list[Any], namespace: str = "", prefix: str = "", converters: tuple = ()
) -> Iterator[Route]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        found = tuple((arg, type(conv).__name__) for arg, conv in entry.pattern.converters.items())
        if route.startswith(SKIPPED_PREFIXES):
            continue
        if isinstance(entry, URLResolver):
            ns = entry.namespace
            yield from _walk(
                entry.url_patterns,
                f"{namespace}{ns}:" if ns else namespace,
                route,
                converters + found,
            )
        elif isinstance(entry, URLPattern):
            assert entry.name, f"{route} has no name"
            name = namespace + entry.name
            if name not in SKIPPED_NAMES:
                yield Route(name, converters + found)


def project_routes() -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for route in _walk(get_resolver().url_patterns):
        assert route.name not in routes, f"{route.name} names two URL patterns"
        routes[route.name] = route
    return routes


def test_every_url_has_a_row() -> None:
    assert set(project_routes()) == set(CONSOLE) | set(API)
    assert not set(CONSOLE) & set(API)


def test_declared_permissions_exist_in_the_role_table() -> None:
    granted = set().union(*ROLE_PERMS.values())
    for name, row in CONSOLE.items():
        if isinstance(row, TenantPage):
            assert row.perm in granted, name
    assert set(ROLE_PERMS["owner"]) == set(Perm)  # the owner may do everything


def test_support_is_refused_every_key_change() -> None:
    """The table's rows for support: each key-changing URL answers 403, and the
    console matrix below runs every one of them as support."""
    for name in KEY_CHANGING:
        row = CONSOLE[name]
        assert isinstance(row, TenantPage) and row.method == "POST", name
        assert console_expected(row, "POST", SUPPORT) == E403, name


# Expected answers.


def console_expected(row: TenantPage | Fixed, method: str, actor: str) -> str:
    if isinstance(row, Fixed):
        return row.expected(method, actor)
    if actor == ANONYMOUS:
        return LOGIN  # login_required comes first, even before the method
    if method != row.method:
        return E405
    if actor == OTHER_TENANT:
        return E404  # another tenant's URL: its existence does not leak
    perms = SUPPORT_PERMS if actor == SUPPORT else ROLE_PERMS[NO_SUDO.get(actor, actor)]
    if row.perm not in perms:
        return E403  # a role that may not act is told so before any password is asked
    return SUDO if row.sudo and actor in NO_SUDO else OK


def api_methods(row: ApiEndpoint | Fixed) -> tuple[str, ...]:
    declared = tuple(row.scopes) if isinstance(row, ApiEndpoint) else tuple(row.answers)
    return tuple(dict.fromkeys((*METHODS, *declared)))


def api_expected(row: ApiEndpoint | Fixed, method: str, actor: str) -> str:
    if isinstance(row, Fixed):
        return row.expected(method, actor)
    scope = row.scopes.get(method)
    if scope is None:
        return E405  # before authentication: a wrong method is a wrong method
    if actor in (NO_TOKEN, SESSION):
        return E401  # the API knows bearer tokens only, never the console's session
    return row.authorized.get(method, OK) if actor == scope else E403


# Answers as classes.


def classify(response: Any) -> str:
    status = response.status_code
    if status in (401, 403, 404, 405):
        return str(status)
    if 300 <= status < 400:
        location = response["Location"]
        if location.startswith(resolve_url(settings.LOGIN_URL)):
            return LOGIN
        return SUDO if location.startswith(reverse("console:sudo")) else OK
    # A form or body refused by validation was authorized first.
    if 200 <= status < 300 or status in (400, 409, 413, 415, 422):
        return OK
    return f"status {status}"


def snapshot() -> dict[str, Any]:
    """The rows a refused request must not change."""
    return {
        "tenants": sorted(
            Tenant.objects.values_list("slug", "state", "key_epoch", "dek_cache_ttl")
        ),
        "data_keys": sorted(map(str, DataKey.objects.values_list("pk", flat=True))),
        "key_sources": sorted(KeySource.objects.values_list("id", "state").order_by()),
        "members": sorted(Membership.objects.values_list("id", "role").order_by()),
        # Sign-in events come from signing the actor in; a refused invitation
        # link is recorded on purpose (the owner sees who tried it).
        "events": AuditEvent.objects.exclude(action__startswith="auth.")
        .exclude(action="member.invite_refused")
        # So is a member's refused answer to vendor support's access request.
        .exclude(action="access.answer", outcome="denied")
        .count(),
    }


# The objects a URL's arguments name.


@pytest.fixture
def world(acme: TenantUsers, globex: TenantUsers, support: Any) -> dict[str, Any]:
    return build_world(acme, globex, support)


def build_world(acme: TenantUsers, globex: TenantUsers, support: Any) -> dict[str, Any]:
    """The actors and the arguments that name real rows (the other security tests share it)."""
    system = Actor.system("tests")
    invitation = invitation_create(
        tenant=acme.tenant,
        email="invited@acme.test",
        role="viewer",
        actor=system,
        site_url="http://testserver",
    )
    token = api_token_create(
        tenant=acme.tenant, actor=system, name="matrix", scopes=["records:read"]
    )
    source = KeySource.objects.filter(tenant=acme.tenant).first()
    assert source is not None
    asked = access_request_create(
        tenant=acme.tenant,
        requester=support,
        reason="customer_case",
        case_reference="CASE-1",
        justification="the matrix",
        scopes=["records:read"],
        hours=1,
    )
    return {
        "acme": acme,
        "globex": globex,
        "support": support,
        "args": {
            "slug": "acme",
            "membership_id": Membership.objects.get(user=acme.viewer).pk,
            "invitation_id": invitation.pk,
            "token_id": token.token.pk,
            "source_id": source.pk,
            "token": "not-a-real-invitation-token",
            "key": "matrix/object.bin",
            "uid": uuid.uuid4(),
            "request_id": asked.pk,
            "object_id": uuid.uuid4(),
            "factor_id": uuid.uuid4(),
        },
    }


def url_for(route: Route, args: dict[str, Any]) -> str:
    kwargs = {arg: args[arg] for arg, _ in route.converters}
    return reverse(route.name, kwargs=kwargs)


def console_client(world: dict[str, Any], actor: str) -> Client:
    if actor == ANONYMOUS:
        return Client()
    if actor == OTHER_TENANT:
        return login(world["globex"].owner, sudo=True)
    if actor == SUPPORT:
        return login(world["support"], sudo=True)
    if actor in NO_SUDO:
        return login(getattr(world["acme"], NO_SUDO[actor]), sudo=False)
    return login(getattr(world["acme"], actor), sudo=True)


def check(client: Client, url: str, method: str, expected: str, **extra: Any) -> str | None:
    """None if `method` on `url` answers `expected` (and a refusal changed nothing)."""
    # A refused change must leave no trace; reads are checked for their answer only.
    before = snapshot() if expected != OK and method not in ("GET", "HEAD") else None
    response = client.generic(method, url, **extra)
    got = classify(response)
    if got != expected:
        return f"{method} {url}: expected {expected}, got {got} ({response.status_code})"
    if before is not None and snapshot() != before:
        return f"{method} {url}: refused with {got}, but changed {_diff(before, snapshot())}"
    return None


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [key for key in before if before[key] != after[key]]


@pytest.mark.parametrize("actor", CONSOLE_ACTORS)
def test_console_matrix(world: dict[str, Any], actor: str) -> None:
    client = console_client(world, actor)
    routes = project_routes()
    failures = []
    # Signing out last, so that it does not sign the actor out of the rest.
    for name, row in sorted(CONSOLE.items(), key=lambda item: item[0] == "logout"):
        url = url_for(routes[name], world["args"])
        for method in METHODS:
            failure = check(client, url, method, console_expected(row, method, actor))
            if failure:
                failures.append(failure)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("actor", API_ACTORS)
def test_api_matrix(world: dict[str, Any], actor: str) -> None:
    headers: dict[str, str] = {}
    client = Client()
    if actor == SESSION:
        client = login(world["acme"].owner, sudo=True)
    elif actor != NO_TOKEN:
        issued = api_token_create(
            tenant=world["acme"].tenant, actor=Actor.system("tests"), name=actor, scopes=[actor]
        )
        headers["Authorization"] = f"Bearer {issued.text}"
    routes = project_routes()
    failures = []
    for name, row in API.items():
        url = url_for(routes[name], world["args"])
        for method in api_methods(row):
            expected = api_expected(row, method, actor)
            failure = check(client, url, method, expected, headers=headers)
            if failure:
                failures.append(failure)
    assert not failures, "\n".join(failures)


def test_api_token_of_another_tenant_finds_nothing(world: dict[str, Any]) -> None:
    """The API's tenant is the token's: globex's token cannot reach acme's object."""
    system = Actor.system("tests")
    scopes = ["objects:read", "objects:write"]
    acme = api_token_create(tenant=world["acme"].tenant, actor=system, name="a", scopes=scopes)
    globex = api_token_create(tenant=world["globex"].tenant, actor=system, name="g", scopes=scopes)
    url = reverse("api:object", kwargs={"key": "shared/name.bin"})
    client = Client()
    stored = client.put(
        url,
        b"acme's bytes",
        content_type="application/octet-stream",
        headers={"Authorization": f"Bearer {acme.text}"},
    )
    assert stored.status_code in (200, 201), stored.content
    other = {"Authorization": f"Bearer {globex.text}"}
    assert client.get(url, headers=other).status_code == 404
    assert client.head(url, headers=other).status_code == 404
    client.delete(url, headers=other)
    mine = client.get(url, headers={"Authorization": f"Bearer {acme.text}"})
    assert mine.status_code == 200
    body = b"".join(mine.streaming_content) if mine.streaming else mine.content  # type: ignore[attr-defined]
    assert body == b"acme's bytes"


# Sessions that skipped the second factor: vendor staff, a superuser, and a
# member who has a factor, signed in some other way than Keyward's sign-in.
WITHOUT_SECOND_FACTOR = ("support", "superuser", "member_with_factor")


def _without_second_factor(world: dict[str, Any], who: str) -> Client:
    from console.mfa.services import totp_begin, totp_confirm
    from tests.console.mfa_helpers import code_now

    if who == "support":
        user = world["support"]
    elif who == "superuser":
        user = get_user_model().objects.filter(username="root@vendor.test").first()
        if user is None:
            user = get_user_model().objects.create_superuser(
                username="root@vendor.test", email="root@vendor.test", password="x" * 16
            )
    else:
        user = world["acme"].owner
        if not user.second_factors.filter(confirmed=True).exists():
            enrolment = totp_begin(user=user)
            totp_confirm(
                user=user, factor_id=str(enrolment.factor.pk), code=code_now(enrolment.secret)
            )
    return login(user, sudo=True, second_factor=False)


@pytest.mark.parametrize("who", WITHOUT_SECOND_FACTOR)
def test_a_session_without_the_second_factor_is_anonymous_everywhere(
    world: dict[str, Any], who: str
) -> None:
    routes = project_routes()
    failures = []
    for name, row in CONSOLE.items():
        url = url_for(routes[name], world["args"])
        for method in METHODS:
            # A new session each time: the first request ends it.
            client = _without_second_factor(world, who)
            failure = check(client, url, method, console_expected(row, method, ANONYMOUS))
            if failure:
                failures.append(failure)
    assert not failures, "\n".join(failures)
