"""Sign-in events, written to the audit chain of every tenant the person belongs to;
and the owners' email when their audit stream is paused.

People sign in to Keyward, not to a tenant, but each tenant's administrators
must see who signed in with access to their keys. Vendor staff and unknown
usernames go to the vendor chain.
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.core.mail import send_mail
from django.dispatch import receiver
from django.http import HttpRequest

from audit.models import Outcome, StreamDestination
from audit.services import Actor, record_for_tenants
from audit.streaming.delivery import stream_paused
from tenants.models import Membership, Role, Tenant


def _tenants_of(user: AbstractBaseUser | None) -> list[Tenant | None]:
    if user is None:
        return [None]
    tenants: list[Tenant | None] = list(Tenant.objects.filter(memberships__user_id=user.pk))
    return tenants or [None]


def _user_named(username: str) -> AbstractBaseUser | None:
    user_model = get_user_model()
    return user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()


def _actor(user: AbstractBaseUser | None, username: str) -> Actor:
    if user is None:
        return Actor.anonymous(username)
    return Actor.for_user(user, support=bool(getattr(user, "is_staff", False)))


@receiver(user_logged_in, dispatch_uid="audit_login")
def _on_login(sender: Any, request: HttpRequest, user: AbstractBaseUser, **_: Any) -> None:
    record_for_tenants(
        _tenants_of(user), actor=_actor(user, ""), action="auth.login", request=request
    )


@receiver(user_logged_out, dispatch_uid="audit_logout")
def _on_logout(sender: Any, request: HttpRequest, user: AbstractBaseUser | None, **_: Any) -> None:
    if user is None:
        return
    record_for_tenants(
        _tenants_of(user), actor=_actor(user, ""), action="auth.logout", request=request
    )


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def _on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    username = str(credentials.get("username", ""))[:254]
    user = _user_named(username)
    record_for_tenants(
        _tenants_of(user),
        actor=_actor(user, username),
        action="auth.login",
        outcome=Outcome.FAILURE,
        reason="wrong email or password, or sign-in locked",
        request=request,
    )


@receiver(user_locked_out, dispatch_uid="audit_lockout")
def _on_lockout(sender: Any, request: HttpRequest, username: str | None = None, **_: Any) -> None:
    name = (username or "")[:254]
    user = _user_named(name)
    record_for_tenants(
        _tenants_of(user),
        actor=_actor(user, name),
        action="auth.lockout",
        outcome=Outcome.DENIED,
        reason="too many failed sign-ins; locked for a while",
        request=request,
    )


@receiver(stream_paused, dispatch_uid="stream_paused_email")
def _on_stream_paused(sender: Any, destination: StreamDestination, **_: Any) -> None:
    """The owners hear of a paused audit stream: only they can resume it."""
    tenant = destination.tenant
    recipients = [
        email
        for email in Membership.objects.filter(tenant=tenant, role=Role.OWNER).values_list(
            "user__email", flat=True
        )
        if email
    ]
    if not recipients:
        return
    send_mail(
        subject=f"[Keyward] {tenant.name}: audit streaming is paused",
        message=(
            f"Keyward stopped sending {tenant.name}'s audit events to "
            f"{destination.address} after {destination.failures} failed deliveries.\n\n"
            f"Last error: {destination.last_error}\n\n"
            f"Nothing is lost: events are delivered from #{destination.cursor + 1} on, in "
            "order, once an owner resumes streaming on the Audit trail page (Streaming).\n"
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=recipients,
        fail_silently=True,
    )
