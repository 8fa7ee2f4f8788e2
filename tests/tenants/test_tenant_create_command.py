from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.test import Client

from audit.models import AuditEvent
from keys.models import DataKey, KeySource
from tenants.models import Invitation, Membership, Tenant

NEW_PASSWORD = "plum orbit lantern 42"


def run(capture, *args: str) -> str:
    out = StringIO()
    with capture(execute=True):
        call_command("tenant_create", *args, stdout=out)
    return out.getvalue()


def test_creates_a_complete_tenant_and_invites_its_owner(
    db, settings, django_capture_on_commit_callbacks
) -> None:
    settings.KEYWARD_SITE_URL = "https://keyward.example.com"
    out = run(
        django_capture_on_commit_callbacks,
        "--name", "Initech", "--slug", "initech", "--owner", "Peter@Initech.example",
    )  # fmt: skip
    tenant = Tenant.objects.get(slug="initech")
    assert "Created tenant Initech (initech)" in out
    # What the console's create makes: a key source and the first data key, audited.
    assert KeySource.objects.filter(tenant=tenant).count() == 1
    assert DataKey.objects.filter(tenant=tenant, version=1).exists()
    actions = set(AuditEvent.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"tenant.create", "dek.create", "member.invite"} <= actions
    invitation = Invitation.objects.get(tenant=tenant)
    assert (invitation.email, invitation.role) == ("peter@initech.example", "owner")
    assert "Your Keyward administrator invited you to Initech" in str(mail.outbox[-1].body)
    link = re.search(r"\S+/join/\S+/", str(mail.outbox[-1].body))
    assert link and link.group(0).startswith("https://keyward.example.com/t/initech/members/join/")
    # The owner follows the link and owns the tenant.
    client = Client()
    path = "/" + link.group(0).split("/", 3)[3]
    client.post(path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    owner = get_user_model().objects.get(username="peter@initech.example")
    assert Membership.objects.get(user=owner, tenant=tenant).role == "owner"


def test_listed_in_manage_py_help() -> None:
    assert get_commands()["tenant_create"] == "tenants"


def nothing_was_created(slug: str, owner: str) -> None:
    assert not Tenant.objects.filter(slug=slug).exists()
    assert not get_user_model().objects.filter(username=owner).exists()
    assert not Membership.objects.filter(tenant__slug=slug).exists()
    assert not Invitation.objects.filter(email=owner).exists()
    assert not mail.outbox


@pytest.mark.parametrize(
    ("slug", "owner", "message"),
    [
        ("acme", "boss@new.example", "--slug: A tenant with the slug 'acme' exists already."),
        ("newco", "not-an-email", "--owner: 'not-an-email' is not an email address."),
        ("newco", "boss@", "is not an email address"),
        ("new co", "boss@new.example", "--slug: Enter a valid"),
        ("new/co", "boss@new.example", "--slug: Enter a valid"),
        ("néco", "boss@new.example", "--slug: Enter a valid"),
        ("x" * 64, "boss@new.example", "--slug: Ensure this value has at most 63 characters"),
    ],
)
def test_bad_input_is_a_clear_error_and_creates_nothing(
    acme, django_capture_on_commit_callbacks, slug: str, owner: str, message: str
) -> None:
    tenants_before = Tenant.objects.count()
    events_before = AuditEvent.objects.count()
    with pytest.raises(CommandError) as raised:
        run(
            django_capture_on_commit_callbacks,
            "--name", "New Co", "--slug", slug, "--owner", owner,
        )  # fmt: skip
    assert message in str(raised.value)
    assert Tenant.objects.count() == tenants_before
    assert AuditEvent.objects.count() == events_before
    if slug != "acme":
        nothing_was_created(slug, owner)


def test_a_bad_site_url_is_refused(db, django_capture_on_commit_callbacks) -> None:
    with pytest.raises(CommandError, match="--site-url"):
        run(
            django_capture_on_commit_callbacks,
            "--name", "N", "--slug", "n", "--owner", "a@n.example", "--site-url", "ftp://x",
        )  # fmt: skip
    nothing_was_created("n", "a@n.example")
