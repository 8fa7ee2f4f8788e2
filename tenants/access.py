"""Vendor support's access to a tenant's data, only as the tenant's approvers allow it.

A support engineer asks (why, for which case, what, for how long); the tenant's
owners, or the members they name, approve or deny with a comment; approval opens
a window of the asked length in which each read is recorded with the grant's id.
An owner can end the window early; a request nobody answers in time expires; a
tenant can ask for two approvals or never allow access at all. Every step is in
the tenant's audit trail. The grant never reaches past the customer's key: the
data is read through the same envelope as always, so a revoked key still wins.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from tenants.models import (
    SUPPORT_ACCESS_MAX_HOURS,
    AccessDecision,
    AccessReason,
    AccessRequest,
    AccessScope,
    AccessState,
    Membership,
    Role,
    ServiceState,
    SupportAccess,
    Tenant,
)

logger = logging.getLogger(__name__)

# A signed-in person (settings.AUTH_USER_MODEL), or anonymous where a view lets one through.
User = Any


class AccessRefused(Exception):
    """A lockbox step that may not happen; the message is the person's to read."""


def _support_actor(user: User) -> Actor:
    return Actor.for_user(user, support=True)


def approvers(tenant: Tenant) -> list[Membership]:
    """The tenant's owners and the members it names as approvers."""
    return list(
        Membership.objects.select_related("user").filter(
            Q(role=Role.OWNER) | Q(approves_support_access=True), tenant=tenant
        )
    )


def _approver(tenant: Tenant, user: User) -> Membership:
    membership = (
        Membership.objects.filter(tenant=tenant, user_id=user.pk).first()
        if user.is_authenticated
        else None
    )
    if membership is None or not (
        membership.role == Role.OWNER or membership.approves_support_access
    ):
        raise AccessRefused("Only the tenant's owners and named approvers answer access requests.")
    return membership


def _notify(recipients: list[str], subject: str, body: str) -> None:
    if not recipients:
        return

    def send() -> None:
        try:
            send_mail(
                subject=subject,
                message=body,
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=recipients,
            )
        except Exception:
            # The request stands and the Access page shows it; mail is a nudge.
            logger.exception("could not send the access request email")

    transaction.on_commit(send)


def _access_page(tenant: Tenant) -> str:
    return f"{settings.KEYWARD_SITE_URL}{reverse('access:page', args=[tenant.slug])}"


@transaction.atomic
def access_request_create(
    *,
    tenant: Tenant,
    requester: User,
    reason: str,
    case_reference: str,
    justification: str,
    scopes: list[str],
    hours: int,
    request: HttpRequest | None = None,
) -> AccessRequest:
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    actor = _support_actor(requester)
    refusal = _request_refusal(tenant, requester, reason, case_reference, justification, scopes)
    if refusal is None and not 1 <= hours <= tenant.support_max_hours:
        refusal = f"Ask for 1 to {tenant.support_max_hours} hours: {tenant.name} allows no more."
    if refusal is not None:
        raise AccessRefused(refusal)
    now = timezone.now()
    asked = AccessRequest.objects.create(
        tenant=tenant,
        requester=requester if requester.is_authenticated else None,
        requester_display=actor.display,
        reason=reason,
        case_reference=case_reference.strip(),
        justification=justification.strip(),
        scopes=sorted(set(scopes)),
        hours=hours,
        answer_by=now + timedelta(hours=settings.KEYWARD_ACCESS_ANSWER_HOURS),
    )
    record(
        tenant=tenant,
        actor=actor,
        action="access.request",
        target=str(asked.pk),
        reason=asked.justification[:500],
        details={
            "reason": reason,
            "case": asked.case_reference,
            "scopes": asked.scopes,
            "hours": hours,
        },
        request=request,
    )
    _notify(
        [m.user.email for m in approvers(tenant) if m.user.email],
        f"[Keyward] Vendor support asks to read {tenant.name}'s data",
        f"{actor.display} asks to read {tenant.name}'s data "
        f"({', '.join(asked.scopes)}) for {hours} hour(s).\n\n"
        f"Reason: {asked.get_reason_display()}, case {asked.case_reference}.\n"
        f"{asked.justification}\n\n"
        f"Approve or deny it on the Access page before {asked.answer_by:%Y-%m-%d %H:%M} UTC:\n"
        f"{_access_page(tenant)}\n",
    )
    return asked


def _request_refusal(
    tenant: Tenant,
    requester: User,
    reason: str,
    case_reference: str,
    justification: str,
    scopes: list[str],
) -> str | None:
    if not (requester.is_authenticated and getattr(requester, "is_staff", False)):
        return "Only vendor support staff ask for access."
    if tenant.support_access == SupportAccess.NEVER:
        return f"{tenant.name} never allows vendor support to read its data."
    if reason not in AccessReason.values:
        return "Choose why you need access."
    if not case_reference.strip() or not justification.strip():
        return "Give the case reference and say why you need the data."
    if not scopes or not set(scopes) <= set(AccessScope.values):
        return "Choose what you need to read."
    open_states = [AccessState.PENDING, AccessState.APPROVED]
    mine = AccessRequest.objects.filter(
        tenant=tenant, requester_id=requester.pk, state__in=open_states
    )
    if any(r.state == AccessState.PENDING or r.is_active(timezone.now()) for r in mine):
        return "You have an open request or grant for this tenant already."
    return None


def _open_request(access_request: AccessRequest, now: datetime) -> AccessRequest:
    locked = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
    if locked.state != AccessState.PENDING:
        raise AccessRefused(
            f"This request is {locked.get_state_display().lower()}: it takes no answer now."
        )
    return locked


@transaction.atomic
def access_request_approve(
    *,
    access_request: AccessRequest,
    approver: User,
    comment: str,
    request: HttpRequest | None = None,
) -> AccessRequest:
    return _decide(access_request, approver, comment, approve=True, request=request)


@transaction.atomic
def access_request_deny(
    *,
    access_request: AccessRequest,
    approver: User,
    comment: str,
    request: HttpRequest | None = None,
) -> AccessRequest:
    return _decide(access_request, approver, comment, approve=False, request=request)


def _decide(
    access_request: AccessRequest,
    approver: User,
    comment: str,
    *,
    approve: bool,
    request: HttpRequest | None,
) -> AccessRequest:
    tenant = access_request.tenant
    action = "access.approve" if approve else "access.deny"
    now = timezone.now()
    membership = _approver(tenant, approver)
    actor = Actor.for_user(approver, role=Role(membership.role).label)
    if approver.pk == access_request.requester_id:
        raise AccessRefused("You asked for this access: someone else must answer.")
    if access_request.state == AccessState.PENDING and now >= access_request.answer_by:
        raise AccessRefused("This request was not answered in time: it has expired.")
    locked = _open_request(access_request, now)
    if locked.decisions.filter(user_id=approver.pk).exists():
        raise AccessRefused("You have answered this request already.")
    AccessDecision.objects.create(
        request=locked,
        user=approver,
        user_display=actor.display,
        approved=approve,
        comment=comment.strip()[:1000],
    )
    details: dict[str, Any] = {"comment": comment.strip()[:500]}
    if not approve:
        locked.state = AccessState.DENIED
        locked.closed_at = now
        locked.closed_by_display = actor.display
    elif locked.decisions.filter(approved=True).count() >= tenant.support_approvals:
        locked.state = AccessState.APPROVED
        locked.approved_at = now
        locked.ends_at = now + timedelta(hours=locked.hours)
        details["grant_ends"] = locked.ends_at.isoformat()
    else:
        details["approvals_needed"] = tenant.support_approvals
    locked.save()
    record(
        tenant=tenant,
        actor=actor,
        action=action,
        target=str(locked.pk),
        reason=comment.strip()[:500],
        details=details,
        request=request,
    )
    answered = locked.state != AccessState.PENDING
    if locked.requester is not None and locked.requester.email and answered:
        verdict = (
            f"approved until {locked.ends_at:%Y-%m-%d %H:%M} UTC"
            if locked.state == AccessState.APPROVED and locked.ends_at
            else "denied"
        )
        _notify(
            [locked.requester.email],
            f"[Keyward] Your access request to {tenant.name} was {verdict.split(' ')[0]}",
            f"{actor.display} {verdict} your request (case {locked.case_reference}).\n"
            f"Comment: {comment.strip() or '(none)'}\n",
        )
    return locked


@transaction.atomic
def access_grant_end(
    *, access_request: AccessRequest, owner: User, request: HttpRequest | None = None
) -> AccessRequest:
    """An owner closes an approved window (or withdraws a pending request) now."""
    tenant = access_request.tenant
    membership = Membership.objects.filter(tenant=tenant, user_id=owner.pk).first()
    if membership is None or membership.role != Role.OWNER:
        raise AccessRefused("Only the tenant's owners end vendor support's access.")
    actor = Actor.for_user(owner, role=Role.OWNER.label)
    now = timezone.now()
    locked = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
    if not (locked.is_active(now) or locked.state == AccessState.PENDING):
        raise AccessRefused("This access is over already.")
    locked.state = AccessState.ENDED
    locked.closed_at = now
    locked.closed_by_display = actor.display
    locked.save()
    record(tenant=tenant, actor=actor, action="access.end", target=str(locked.pk), request=request)
    return locked


def _expire(locked: AccessRequest, now: datetime) -> None:
    was_pending = locked.state == AccessState.PENDING
    locked.state = AccessState.EXPIRED if was_pending else AccessState.FINISHED
    locked.closed_at = now
    locked.closed_by_display = "the clock"
    locked.save()
    record(
        tenant=locked.tenant,
        actor=Actor.system("access expiry"),
        action="access.expire" if was_pending else "access.grant_over",
        target=str(locked.pk),
        reason="not answered in time" if was_pending else "the approved window is over",
    )


@transaction.atomic
def access_expire_due() -> int:
    """Close requests nobody answered in time and windows that are over; how many.

    Reads never wait for this: a grant is checked against its end time directly.
    This only puts each ending in the trail and on the Access page.
    """
    now = timezone.now()
    due = AccessRequest.objects.select_for_update(skip_locked=True).filter(
        Q(state=AccessState.PENDING, answer_by__lte=now)
        | Q(state=AccessState.APPROVED, ends_at__lte=now)
    )
    count = 0
    for locked in due.select_related("tenant"):
        _expire(locked, now)
        count += 1
    return count


# A grant does not outlive the key: these states keep the data unreadable.
UNREADABLE_STATES = frozenset({ServiceState.REVOKED, ServiceState.DESTROYED})


def active_grant(tenant: Tenant, user: User, scope: str) -> AccessRequest:
    """The open grant that lets `user` read `scope` of the tenant now, or a refusal."""
    if not (user.is_authenticated and getattr(user, "is_staff", False)):
        raise AccessRefused("Only vendor support staff read through an access grant.")
    now = timezone.now()
    grants = AccessRequest.objects.filter(
        tenant=tenant, requester_id=user.pk, state=AccessState.APPROVED, ends_at__gt=now
    )
    grant = next((g for g in grants if scope in g.scopes), None)
    if grant is None:
        raise AccessRefused(
            f"You have no open grant to read {tenant.name}'s data: ask for access first."
        )
    if tenant.state in UNREADABLE_STATES:
        raise AccessRefused(
            f"{tenant.name}'s key is {tenant.get_state_display().lower()}: "
            "its data cannot be read, with or without a grant."
        )
    return grant


def access_read_record(
    *,
    grant: AccessRequest,
    user: User,
    what: str,
    target: str,
    details: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> None:
    """One read through a grant, in the tenant's trail with the grant's id."""
    record(
        tenant=grant.tenant,
        actor=_support_actor(user),
        action=f"access.read_{what}",
        target=target[:254],
        details={"grant": str(grant.pk), **(details or {})},
        request=request,
    )


def access_refusal_record(
    *,
    tenant: Tenant,
    actor: Actor,
    action: str,
    reason: str,
    target: str = "",
    request: HttpRequest | None = None,
) -> None:
    """A refused lockbox step (a read without a grant, an answer by the wrong person):
    recorded on its own, after the refused step changed nothing."""
    record(
        tenant=tenant,
        actor=actor,
        action=action,
        outcome=Outcome.DENIED,
        target=target,
        reason=reason,
        request=request,
    )


@transaction.atomic
def tenant_set_support_access(
    *,
    tenant: Tenant,
    actor: Actor,
    policy: str,
    approvals: int,
    max_hours: int,
    approver_ids: list[str],
    request: HttpRequest | None = None,
) -> Tenant:
    """The owners' settings of the lockbox, with who may approve besides them."""
    if policy not in SupportAccess.values:
        raise AccessRefused("Choose whether vendor support may ever read your data.")
    if approvals not in (1, 2):
        raise AccessRefused("Ask for one or two approvals.")
    if not 1 <= max_hours <= SUPPORT_ACCESS_MAX_HOURS:
        raise AccessRefused(f"Allow 1 to {SUPPORT_ACCESS_MAX_HOURS} hours per grant.")
    members = Membership.objects.filter(tenant=tenant)
    wanted = {str(pk) for pk in approver_ids}
    if not wanted <= {str(pk) for pk in members.values_list("pk", flat=True)}:
        raise AccessRefused("Approvers must be members of this tenant.")
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    locked.support_access = policy
    locked.support_approvals = approvals
    locked.support_max_hours = max_hours
    locked.save(update_fields=["support_access", "support_approvals", "support_max_hours"])
    members.update(approves_support_access=False)
    members.filter(pk__in=wanted).update(approves_support_access=True)
    if approvals == 2 and len(approvers(locked)) < 2:
        raise AccessRefused("Two approvals need at least two approvers (owners or named members).")
    if policy == SupportAccess.NEVER:
        # "Never" is at once: pending requests and open windows close too.
        now = timezone.now()
        for open_request in AccessRequest.objects.select_for_update().filter(
            tenant=locked, state__in=[AccessState.PENDING, AccessState.APPROVED]
        ):
            open_request.state = AccessState.ENDED
            open_request.closed_at = now
            open_request.closed_by_display = actor.display
            open_request.save()
    record(
        tenant=locked,
        actor=actor,
        action="access.settings",
        details={
            "policy": policy,
            "approvals": approvals,
            "max_hours": max_hours,
            "approvers": sorted(
                members.filter(pk__in=wanted).values_list("user__username", flat=True)
            ),
        },
        request=request,
    )
    return locked
