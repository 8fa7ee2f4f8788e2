"""Uploaded keys with an expiry: warnings 30, 7 and 1 days before, by banner and email.

At expiry the provider refuses the key (its copy counts as gone) and the health
check revokes the tenant, exactly as if the customer had revoked it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.expressions import Combinable
from django.utils import timezone

from audit.services import Actor, record
from keys.models import KekState, KekVersion, SourceState
from tenants.models import Membership, Role, Tenant

WARN_DAYS = (30, 7, 1)


def expiring_versions(
    tenant: Tenant,
    *,
    within: timedelta = timedelta(days=30),
    now: datetime | Combinable | None = None,
) -> QuerySet[KekVersion]:
    """The tenant's uploaded key versions in use that expire within `within`, soonest first.

    `now` may be the database's clock (`Now()`), for a statement compiled once.
    """
    now = timezone.now() if now is None else now
    return KekVersion.objects.filter(
        source__tenant=tenant,
        source__state=SourceState.ACTIVE,
        state__in=[KekState.ACTIVE, KekState.PENDING],
        material_expires_at__gt=now,
        material_expires_at__lte=now + within,
    ).order_by("material_expires_at")


def expiring_version(
    tenant: Tenant,
    *,
    within: timedelta = timedelta(days=30),
    now: datetime | Combinable | None = None,
) -> KekVersion | None:
    """The tenant's uploaded key version in use that expires soonest, if within `within`."""
    return expiring_versions(tenant, within=within, now=now).first()


def _due(expires_at: datetime, sent: list[int], now: datetime) -> int | None:
    """The smallest warning threshold reached and not yet sent."""
    left = expires_at - now
    due = [days for days in WARN_DAYS if left <= timedelta(days=days) and days not in sent]
    return min(due) if due else None


def warn_expiring_keys() -> int:
    """Send each due warning once (idempotent: the threshold is recorded with it)."""
    now = timezone.now()
    sent_count = 0
    candidates = KekVersion.objects.filter(
        source__state=SourceState.ACTIVE,
        material_expires_at__gt=now,
        material_expires_at__lte=now + timedelta(days=max(WARN_DAYS)),
    ).select_related("source__tenant")
    for version in candidates:
        with transaction.atomic():
            locked = KekVersion.objects.select_for_update().get(pk=version.pk)
            days = _due(locked.material_expires_at, list(locked.expiry_warnings_sent), now)  # type: ignore[arg-type]
            if days is None:
                continue
            locked.expiry_warnings_sent = sorted(
                {*locked.expiry_warnings_sent, *[d for d in WARN_DAYS if d >= days]}
            )
            locked.save(update_fields=["expiry_warnings_sent"])
            tenant = version.source.tenant
            record(
                tenant=tenant,
                actor=Actor.system("key expiry"),
                action="key.expiry_warning",
                target=locked.provider_version,
                details={"days": days, "expires_at": locked.material_expires_at.isoformat()},  # type: ignore[union-attr]
            )
            transaction.on_commit(partial(_email, tenant, locked, days))
        sent_count += 1
    return sent_count


def _email(tenant: Tenant, version: KekVersion, days: int) -> None:
    recipients = list(
        Membership.objects.filter(tenant=tenant, role__in=[Role.OWNER, Role.KEY_ADMIN]).values_list(
            "user__email", flat=True
        )
    )
    if not recipients:
        return
    when = version.material_expires_at.strftime("%Y-%m-%d %H:%M UTC")  # type: ignore[union-attr]
    send_mail(
        subject=f"[Keyward] {tenant.name}: your uploaded key expires in {days} day(s)",
        message=(
            f"The key you uploaded to Keyward for {tenant.name} ({version.provider_version}, "
            f"key check value {version.check_value}) expires on {when}.\n\n"
            "At that moment Keyward stops using it and the tenant's data becomes unreadable, "
            "as after a revoke. Upload a new key before then (Keys, Upload your own key), "
            "then confirm the rotation.\n"
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=recipients,
    )
