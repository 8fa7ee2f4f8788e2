"""The second factor: enrolment, signing in with it, recovery codes, sudo mode
for tenants that require it, removal, the operators' reset; and bad input."""

from __future__ import annotations

import base64
import json
import re
import time
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY as AUTH_SESSION_KEY
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent, Outcome
from audit.services import Actor
from console.mfa.models import Factor, RecoveryCode
from console.mfa.services import (
    recovery_codes_regenerate,
    totp_begin,
    totp_confirm,
)
from console.mfa.session import PENDING_KEY
from tenants.models import Membership, Tenant
from tenants.services import tenant_create, tenant_set_second_factor_requirement
from tests.conftest import PASSWORD, login, make_user
from tests.console.mfa_helpers import code_at_step, code_now


@pytest.fixture(autouse=True)
def _no_old_attempts() -> None:
    # Counts of wrong codes live in the cache (this test run's Redis database),
    # keyed by user id, which a fresh test database hands out again.
    cache.clear()


def enrol(user: Any) -> tuple[str, list[str]]:
    """Enrol an authenticator app for `user`: its secret and the recovery codes."""
    enrolment = totp_begin(user=user)
    _, codes = totp_confirm(
        user=user, factor_id=str(enrolment.factor.pk), code=code_now(enrolment.secret)
    )
    return enrolment.secret, codes


def password_step(client: Client, user: Any) -> Any:
    return client.post(reverse("login"), {"username": user.username, "password": PASSWORD})


def signed_in(client: Client) -> bool:
    return AUTH_SESSION_KEY in client.session


def events(action: str, **filters: Any) -> Any:
    return AuditEvent.objects.filter(action=action, **filters)


# --- Signing in -----------------------------------------------------------------


def test_a_member_without_a_factor_signs_in_with_the_password(acme) -> None:
    client = Client()
    response = password_step(client, acme.viewer)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:home")
    assert signed_in(client)


def test_staff_enrol_at_their_first_sign_in_before_anything_else(support) -> None:
    client = Client()
    response = password_step(client, support)
    assert response["Location"] == reverse("mfa:enrol_sign_in")
    assert not signed_in(client)
    # Not signed in yet: every page asks to sign in.
    home = client.get(reverse("console:home"))
    assert home.status_code == 302 and home["Location"].startswith(reverse("login"))
    assert client.get("/admin/").status_code == 302

    page = client.get(reverse("mfa:enrol_sign_in"))
    assert page.status_code == 200
    secret = page.context["secret"].replace(" ", "")
    factor_id = page.context["factor_id"]
    assert page.context["qr"].startswith("data:image/svg+xml")
    assert secret in page.context["uri"] and "issuer=Keyward" in page.context["uri"]

    # A wrong code: a clear message, nothing enrolled, a failure in the trail.
    wrong = client.post(reverse("mfa:enrol_sign_in"), {"factor": factor_id, "code": "000000"})
    assert wrong.status_code == 200
    assert "That code is not right" in wrong.content.decode()
    assert wrong.context["secret"].replace(" ", "") == secret  # the same set-up, again
    assert not Factor.objects.filter(user=support, confirmed=True).exists()
    assert not signed_in(client)
    assert events("mfa.enrol", outcome=Outcome.FAILURE, tenant=None).count() == 1

    pending_session = client.session.session_key
    done = client.post(
        reverse("mfa:enrol_sign_in"), {"factor": factor_id, "code": code_now(secret)}
    )
    assert done.status_code == 200
    codes = done.context["codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){3}", code) for code in codes)
    assert signed_in(client)
    assert client.session.session_key != pending_session  # a new session id
    # Signed in: staff are sent on from the home page to the support console.
    home = client.get(reverse("console:home"))
    assert home.status_code == 302 and home["Location"] == "/support/"
    assert client.get("/support/").status_code == 200
    assert events("mfa.enrol", outcome=Outcome.SUCCESS, tenant=None).count() == 1
    assert events("auth.login", tenant=None).count() == 1

    # Stored sealed and hashed, never in the clear.
    factor = Factor.objects.get(user=support, confirmed=True)
    stored = bytes(factor.sealed_secret or b"")
    assert secret.encode() not in stored
    digests = list(RecoveryCode.objects.filter(user=support).values_list("digest", flat=True))
    assert len(digests) == 10
    for code in codes:
        assert all(code not in d and code.replace("-", "") not in d for d in digests)
    # Never shown back: the Second factor page has neither.
    shown = client.get(reverse("mfa:factors")).content.decode()
    assert secret not in shown and codes[0] not in shown


def test_a_password_alone_never_enrols_an_account_that_has_a_factor(support) -> None:
    enrol(support)
    client = Client()
    assert password_step(client, support)["Location"] == reverse("mfa:verify")
    response = client.get(reverse("mfa:enrol_sign_in"))
    assert response["Location"] == reverse("mfa:verify")
    assert Factor.objects.filter(user=support).count() == 1


def test_signing_in_with_a_factor_needs_the_code(acme) -> None:
    secret, _ = enrol(acme.owner)  # enrolment used this time step's code
    client = Client()
    response = password_step(client, acme.owner)
    assert response["Location"] == reverse("mfa:verify")
    assert not signed_in(client)

    wrong = client.post(reverse("mfa:verify"), {"code": "123456"})
    assert "That code is not right" in wrong.content.decode()
    assert not signed_in(client)
    failure = events("auth.second_factor", outcome=Outcome.FAILURE, tenant=acme.tenant).get()
    assert failure.reason == "wrong authenticator code"

    pending_session = client.session.session_key
    right = client.post(reverse("mfa:verify"), {"code": code_now(secret, offset_steps=1)})
    assert right.status_code == 302 and right["Location"] == reverse("console:home")
    assert signed_in(client)
    assert client.session.session_key != pending_session
    assert events("auth.second_factor", outcome=Outcome.SUCCESS, tenant=acme.tenant).exists()


def test_a_code_is_good_once(acme) -> None:
    secret, _ = enrol(acme.owner)
    used_step = Factor.objects.get(user=acme.owner).last_step
    assert used_step is not None
    client = Client()
    password_step(client, acme.owner)
    replay = client.post(reverse("mfa:verify"), {"code": code_at_step(secret, used_step)})
    assert "That code was used already" in replay.content.decode()
    assert not signed_in(client)
    refused = events("auth.second_factor", outcome=Outcome.FAILURE, tenant=acme.tenant).get()
    assert refused.reason == "authenticator code used again"
    # Nor an older one: the step only moves forward.
    earlier = client.post(reverse("mfa:verify"), {"code": code_at_step(secret, used_step - 1)})
    assert not signed_in(client)
    assert "not right" in earlier.content.decode() or "used already" in earlier.content.decode()


def test_a_recovery_code_signs_in_once(acme) -> None:
    _, codes = enrol(acme.owner)
    client = Client()
    password_step(client, acme.owner)
    response = client.post(reverse("mfa:verify"), {"code": codes[3].lower()}, follow=True)
    assert signed_in(client)
    assert "9 are left" in response.content.decode()
    used = events("auth.recovery_code", outcome=Outcome.SUCCESS, tenant=acme.tenant).get()
    assert used.details["left"] == 9

    again = Client()
    password_step(again, acme.owner)
    reused = again.post(reverse("mfa:verify"), {"code": codes[3]})
    assert "That recovery code was used already" in reused.content.decode()
    assert not signed_in(again)
    refused = events("auth.recovery_code", outcome=Outcome.FAILURE, tenant=acme.tenant).get()
    assert refused.reason == "recovery code used already"
    assert RecoveryCode.objects.filter(user=acme.owner, used_at=None).count() == 9


def test_new_recovery_codes_replace_the_old(acme) -> None:
    _, old = enrol(acme.owner)
    new = recovery_codes_regenerate(user=acme.owner)
    assert not set(old) & set(new)
    client = Client()
    password_step(client, acme.owner)
    client.post(reverse("mfa:verify"), {"code": old[0]})
    assert not signed_in(client)
    client.post(reverse("mfa:verify"), {"code": new[0]})
    assert signed_in(client)


def test_wrong_codes_pause_the_second_step(acme, settings) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    secret, _ = enrol(acme.owner)
    client = Client()
    password_step(client, acme.owner)
    for _ in range(3):
        client.post(reverse("mfa:verify"), {"code": "000000"})
    locked = client.post(reverse("mfa:verify"), {"code": code_now(secret, offset_steps=1)})
    assert "Too many wrong codes" in locked.content.decode()
    assert not signed_in(client)
    assert events("auth.second_factor", outcome=Outcome.DENIED, tenant=acme.tenant).exists()
    factor = Factor.objects.get(user=acme.owner)
    assert factor.last_step is not None
    assert factor.last_step == int(time.time()) // 30 or factor.last_step < int(time.time()) // 30


def test_a_pending_sign_in_expires(acme) -> None:
    enrol(acme.owner)
    client = Client()
    password_step(client, acme.owner)
    session = client.session
    session[PENDING_KEY] = {**session[PENDING_KEY], "at": time.time() - 3600}
    session.save()
    response = client.get(reverse("mfa:verify"))
    assert response["Location"] == reverse("login")
    assert not signed_in(client)


def test_the_second_step_without_a_password_first_goes_to_sign_in(db) -> None:
    client = Client()
    assert client.post(reverse("mfa:verify"), {"code": "123456"})["Location"] == reverse("login")
    assert client.get(reverse("mfa:enrol_sign_in"))["Location"] == reverse("login")


def test_a_superuser_must_enrol_too(db) -> None:
    root = make_user("root@vendor.test", is_superuser=True)
    client = Client()
    assert password_step(client, root)["Location"] == reverse("mfa:enrol_sign_in")
    assert not signed_in(client)


def test_the_admin_signs_in_through_the_console(db) -> None:
    response = Client().get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == reverse("login") + "?next=/admin/"


# --- The tenant setting and sudo mode ----------------------------------------------


def test_new_tenants_require_a_second_factor_for_key_actions(db) -> None:
    tenant = tenant_create(name="New", slug="new", actor=Actor.system("tests"))
    assert tenant.require_second_factor


def change_role(client: Client, acme: Any) -> Any:
    membership = Membership.objects.get(user=acme.viewer)
    return client.post(
        reverse("tenants:change_role", args=["acme", membership.pk]),
        {"role": "auditor"},
        HTTP_REFERER="http://testserver/t/acme/members/",
    )


def require_factor(acme: Any) -> None:
    tenant_set_second_factor_requirement(
        tenant=acme.tenant, required=True, actor=Actor.system("tests")
    )


def test_without_the_setting_sudo_asks_for_the_password_only(acme) -> None:
    enrol(acme.owner)
    client = login(acme.owner, sudo=False)
    response = change_role(client, acme)
    assert "factor" not in response["Location"]
    client.post(reverse("console:sudo"), {"password": PASSWORD, "next": "/t/acme/members/"})
    change_role(client, acme)
    assert Membership.objects.get(user=acme.viewer).role == "auditor"


def test_with_the_setting_sudo_asks_for_the_second_factor_too(acme) -> None:
    require_factor(acme)
    secret, codes = enrol(acme.owner)
    client = login(acme.owner, sudo=True, second_factor=True)
    # A password entered recently is not enough; the factor is asked as well.
    session = client.session
    session.pop("keyward_second_factor_at")
    session.save()
    response = change_role(client, acme)
    assert response.status_code == 302
    assert "factor=1" in response["Location"]
    page = client.get(response["Location"])
    assert "second factor as well as your password" in page.content.decode()

    # The right password with a wrong code grants nothing.
    wrong = client.post(
        reverse("console:sudo"),
        {"password": PASSWORD, "code": "000000", "factor": "1", "next": "/t/acme/members/"},
    )
    assert "That code is not right" in wrong.content.decode()
    assert "factor=1" in change_role(client, acme)["Location"]
    # A wrong password with the right code neither (and does not spend the code).
    client.post(
        reverse("console:sudo"),
        {"password": "wrong", "code": code_now(secret, offset_steps=1), "factor": "1", "next": "/"},
    )
    assert "factor=1" in change_role(client, acme)["Location"]
    assert Membership.objects.get(user=acme.viewer).role == "viewer"

    ok = client.post(
        reverse("console:sudo"),
        {"password": PASSWORD, "code": codes[0], "factor": "1", "next": "/t/acme/members/"},
    )
    assert ok["Location"] == "/t/acme/members/"
    change_role(client, acme)
    assert Membership.objects.get(user=acme.viewer).role == "auditor"
    sudo = events("auth.sudo", tenant=acme.tenant).latest("seq")
    assert sudo.details == {"second_factor": True}


def test_a_member_without_a_factor_is_sent_to_set_one_up(acme) -> None:
    require_factor(acme)
    client = login(acme.owner, sudo=True, second_factor=False)
    response = change_role(client, acme)
    page = client.get(response["Location"])
    assert "Set up a second factor first" in page.content.decode()
    # Posting the password with the factor asked for grants nothing either.
    client.post(
        reverse("console:sudo"),
        {"password": PASSWORD, "code": "123456", "factor": "1", "next": "/"},
    )
    change_role(client, acme)
    assert Membership.objects.get(user=acme.viewer).role == "viewer"

    # Setting up the app (password sudo only, as there is no factor yet) passes it.
    setup = client.get(reverse("mfa:totp_add") + "?next=/t/acme/members/")
    assert setup.status_code == 200
    done = client.post(
        reverse("mfa:totp_add"),
        {
            "factor": setup.context["factor_id"],
            "code": code_now(setup.context["secret"]),
            "next": "/t/acme/members/",
        },
    )
    assert done.status_code == 200 and len(done.context["codes"]) == 10
    change_role(client, acme)
    assert Membership.objects.get(user=acme.viewer).role == "auditor"


def test_owners_turn_the_setting_on_and_off(acme) -> None:
    client = login(acme.owner, sudo=True)
    url = reverse("tenants:second_factor_setting", args=["acme"])
    before = events("tenant.second_factor_optional", tenant=acme.tenant).count()
    client.post(url, {"required": "on"})
    assert Tenant.objects.get(slug="acme").require_second_factor
    assert events("tenant.second_factor_required", tenant=acme.tenant).count() == 1
    # Off again now needs the factor, which the session passed at sign-in.
    client.post(url, {"required": "off"})
    assert not Tenant.objects.get(slug="acme").require_second_factor
    assert events("tenant.second_factor_optional", tenant=acme.tenant).count() == before + 1
    page = client.get(reverse("tenants:members", args=["acme"])).content.decode()
    assert "Require a second factor" in page


def test_a_setting_that_is_neither_on_nor_off_changes_nothing(acme) -> None:
    client = login(acme.owner, sudo=True)
    response = client.post(
        reverse("tenants:second_factor_setting", args=["acme"]), {"required": "maybe"}, follow=True
    )
    assert "Choose whether key actions need a second factor" in response.content.decode()
    assert not Tenant.objects.get(slug="acme").require_second_factor
    assert not events("tenant.second_factor_required").exists()


# --- One's own factors ----------------------------------------------------------------


def test_removing_a_factor_needs_it_and_is_audited(acme) -> None:
    secret, _ = enrol(acme.owner)
    factor = Factor.objects.get(user=acme.owner)
    url = reverse("mfa:remove", args=[factor.pk])
    client = login(acme.owner, sudo=True)
    session = client.session
    session.pop("keyward_second_factor_at")
    session.save()
    response = client.post(url, HTTP_REFERER="http://testserver/account/second-factor/")
    assert "factor=1" in response["Location"]
    assert Factor.objects.filter(pk=factor.pk).exists()

    client.post(
        reverse("console:sudo"),
        {
            "password": PASSWORD,
            "code": code_now(secret, offset_steps=1),
            "factor": "1",
            "next": "/",
        },
    )
    client.post(url)
    assert not Factor.objects.filter(user=acme.owner).exists()
    assert not RecoveryCode.objects.filter(user=acme.owner).exists()
    assert events("mfa.remove", tenant=acme.tenant).count() == 1


def test_staff_cannot_remove_their_last_factor(support) -> None:
    enrol(support)
    factor = Factor.objects.get(user=support)
    client = login(support, sudo=True)
    response = client.post(reverse("mfa:remove", args=[factor.pk]), follow=True)
    assert "Vendor staff must keep a second factor" in response.content.decode()
    assert Factor.objects.filter(pk=factor.pk).exists()
    assert not events("mfa.remove").exists()


def test_removing_someone_elses_factor_changes_nothing(acme) -> None:
    enrol(acme.viewer)
    theirs = Factor.objects.get(user=acme.viewer)
    client = login(acme.owner, sudo=True)
    response = client.post(reverse("mfa:remove", args=[theirs.pk]), follow=True)
    assert "not yours" in response.content.decode()
    assert Factor.objects.filter(pk=theirs.pk).exists()


def test_regenerating_recovery_codes_shows_them_once(acme) -> None:
    enrol(acme.owner)
    client = login(acme.owner, sudo=True)
    response = client.post(reverse("mfa:recovery_codes"))
    codes = response.context["codes"]
    assert len(codes) == 10
    assert events("mfa.recovery_codes", tenant=acme.tenant).count() == 1
    assert codes[0] not in client.get(reverse("mfa:factors")).content.decode()


def test_a_session_is_ended_when_the_person_enrols_elsewhere(acme) -> None:
    client = login(acme.owner, second_factor=False)
    assert client.get(reverse("mfa:factors")).status_code == 200
    enrol(acme.owner)
    response = client.get(reverse("console:home"))
    assert response["Location"].startswith(reverse("login"))


# --- Operators ------------------------------------------------------------------------


def test_an_operator_resets_a_lost_factor(support) -> None:
    enrol(support)
    call_command("second_factor_reset", support.username, reason="phone lost, ticket 4121")
    assert not Factor.objects.filter(user=support).exists()
    assert not RecoveryCode.objects.filter(user=support).exists()
    reset = events("mfa.reset").get()
    assert reset.reason == "phone lost, ticket 4121"
    assert reset.details == {"factors": 1}
    client = Client()
    assert password_step(client, support)["Location"] == reverse("mfa:enrol_sign_in")


def test_a_reset_needs_a_known_person_and_a_reason(support) -> None:
    enrol(support)
    with pytest.raises(CommandError, match="No one signs in as"):
        call_command("second_factor_reset", "nobody@vendor.test", reason="x")
    with pytest.raises(CommandError, match="must say why"):
        call_command("second_factor_reset", support.username, reason="  ")
    assert Factor.objects.filter(user=support).count() == 1
    assert not events("mfa.reset").exists()


# --- Security keys: what the server refuses on its own -------------------------------


def security_key(user: Any, credential_id: bytes = b"registered-key") -> Factor:
    return Factor.objects.create(
        user=user,
        kind="webauthn",
        name="Blue key",
        confirmed=True,
        credential_id=credential_id,
        public_key=b"not used: refused before the signature is checked",
    )


def assertion_from(credential_id: bytes) -> str:
    raw = base64.urlsafe_b64encode(credential_id).rstrip(b"=").decode()
    return json.dumps(
        {
            "id": raw,
            "rawId": raw,
            "type": "public-key",
            "response": {"clientDataJSON": "", "authenticatorData": "", "signature": ""},
        }
    )


def test_a_key_that_is_not_registered_to_the_person_is_refused(acme) -> None:
    security_key(acme.owner)
    security_key(acme.viewer, b"someone-elses-key")
    client = Client()
    password_step(client, acme.owner)
    page = client.get(reverse("mfa:verify"))
    assert page.context["webauthn_options"]["rpId"] == "testserver"
    for credential_id in (b"unknown-key", b"someone-elses-key"):
        refused = client.post(reverse("mfa:verify"), {"assertion": assertion_from(credential_id)})
        assert "This security key is not registered to your account" in refused.content.decode()
        assert not signed_in(client)
    failures = events("auth.second_factor", outcome=Outcome.FAILURE, tenant=acme.tenant)
    assert failures.count() == 2
    assert failures.first().reason == "security key not registered to this person"


def test_a_forged_answer_from_a_registered_key_is_refused(acme) -> None:
    key = security_key(acme.owner)
    client = Client()
    password_step(client, acme.owner)
    client.get(reverse("mfa:verify"))
    refused = client.post(
        reverse("mfa:verify"), {"assertion": assertion_from(bytes(key.credential_id or b""))}
    )
    assert "could not be verified" in refused.content.decode()
    assert not signed_in(client)
    key.refresh_from_db()
    assert key.sign_count == 0 and key.last_used_at is None


def test_a_security_key_answer_that_is_not_one_registers_nothing(acme) -> None:
    client = login(acme.owner, sudo=True)
    client.get(reverse("mfa:webauthn_add"))
    response = client.post(
        reverse("mfa:webauthn_add"), {"credential": "{not json", "name": "Blue key"}
    )
    assert "could not be verified" in response.content.decode()
    assert not Factor.objects.filter(user=acme.owner).exists()
    assert events("mfa.enrol", outcome=Outcome.FAILURE, tenant=acme.tenant).exists()


# --- The root key rotation -----------------------------------------------------------


@pytest.fixture
def own_root_key_file(settings: Any, tmp_path: Any) -> Any:
    """A root key file for this test alone, made before the tenants' keys are."""
    from keys.runtime import reset_for_tests

    settings.KEYWARD_ROOT_KEY_FILE = str(tmp_path / "root" / "root-keys.json")
    reset_for_tests()
    yield
    reset_for_tests()


def test_the_root_key_rotation_moves_totp_seeds(own_root_key_file, acme) -> None:
    from keys.rootkey import root_key_file
    from keys.services.rootkeys import root_key_dependents, root_key_retire

    secret, _ = enrol(acme.owner)
    call_command("rotate_root_key", stdout=StringIO())
    assert root_key_dependents(1)["second-factor seeds"] == 1
    out = StringIO()
    call_command("rewrap_data_keys", stdout=out)
    assert "second-factor seeds: 1 sealed again" in out.getvalue()
    assert root_key_dependents(1)["second-factor seeds"] == 0
    root_key_retire(number=1, actor=Actor.system("tests"))
    assert root_key_file().versions() == [2]
    stored = bytes(Factor.objects.get(user=acme.owner).sealed_secret or b"")
    assert stored.startswith(b"root-2\0")
    client = Client()
    password_step(client, acme.owner)
    client.post(reverse("mfa:verify"), {"code": code_now(secret, offset_steps=1)})
    assert signed_in(client)
