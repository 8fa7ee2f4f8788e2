from __future__ import annotations

import os
import random
import secrets
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from audit.services import Actor
from keys.models import DataKey, DataKeyVolume, KeyUsageHour, TenantStateDay
from objects.models import StoredObject
from objects.services import object_put
from records.models import Record
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import Membership, Role, Tenant
from tenants.services import (
    membership_add,
    tenant_addon_enable,
    tenant_create,
    tenant_set_second_factor_requirement,
)

DEMO_TENANTS = (("Acme", "acme"), ("Globex", "globex"))
DEMO_RECORDS = 400
DEMO_OBJECTS = 60  # exported reports, so that enabling a key has objects to move
ROLES = (Role.OWNER, Role.KEY_ADMIN, Role.AUDITOR, Role.VIEWER)


def demo_password() -> str:
    """KEYWARD_DEMO_PASSWORD, else one generated on the first run and kept beside the data."""
    chosen = os.environ.get("KEYWARD_DEMO_PASSWORD")
    if chosen:
        return chosen
    path = Path(settings.DATA_DIR) / "demo-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(12))
    return path.read_text().strip()


def _demo_objects(tenant: Tenant) -> None:
    """Small CSV exports of the tenant's devices, stored encrypted like any object."""
    rng = random.Random(tenant.slug)
    for n in range(DEMO_OBJECTS):
        rows = [
            f"device-{rng.randrange(10**6):06},{rng.choice(['ok', 'warn', 'crit'])}"
            for _ in range(200)
        ]
        body = ("device,status\n" + "\n".join(rows) + "\n").encode()
        object_put(
            tenant=tenant,
            key=f"exports/2026-11/report-{n:03}.csv",
            chunks=[body],
            content_type="text/csv",
        )


def _demo_history(tenant: Tenant) -> None:
    """A plausible week of key use and a month of data growth, for the charts.

    Only for a tenant without any: what the running demo counts itself is kept.
    """
    if KeyUsageHour.objects.filter(tenant=tenant).exists():
        return
    rng = random.Random(f"history-{tenant.slug}")
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    usage = []
    for back in range(1, 7 * 24):
        hour = now - timedelta(hours=back)
        # Office hours in the tenant's day bring most reads, nights a trickle.
        busy = 1.0 if 8 <= hour.hour < 19 and hour.weekday() < 5 else 0.15
        lookups = int(rng.gauss(2400, 300) * busy) + rng.randrange(20)
        loads = max(1, int(lookups * rng.uniform(0.01, 0.03)))
        figures = {
            ("unwrap", "ok"): loads,
            ("describe", "ok"): int(rng.uniform(0, 6) * busy),
            ("wrap", "ok"): 1 if rng.random() < 0.05 else 0,
            ("cache", "hit"): lookups - loads,
            ("cache", "miss"): loads,
        }
        if tenant.slug == "globex" and back in (30, 31):  # an afternoon the key store hiccuped
            figures[("unwrap", "error")] = rng.randrange(3, 9)
        usage += [
            KeyUsageHour(tenant=tenant, hour=hour, kind=kind, outcome=outcome, count=count)
            for (kind, outcome), count in figures.items()
            if count
        ]
    KeyUsageHour.objects.bulk_create(usage)
    dek = DataKey.objects.filter(tenant=tenant).order_by("-version").first()
    if dek is None:
        return
    records = Record.objects.filter(tenant=tenant).count()
    stored = StoredObject.objects.filter(tenant=tenant).count()
    today = now.date()
    DataKeyVolume.objects.bulk_create(
        [
            DataKeyVolume(
                tenant=tenant,
                data_key=dek,
                day=today - timedelta(days=back),
                records=int(records * (1 - back / 60)),
                stored_objects=int(stored * (1 - back / 45)),
            )
            for back in range(30)
        ],
        ignore_conflicts=True,
    )


class Command(BaseCommand):
    help = "Create (or bring up to date) the demo tenants and logins. Safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        password = demo_password()
        logins = self.seed(password)
        self.stdout.write(f"Demo logins (password for all: {password})")
        for login in logins:
            self.stdout.write(f"  {login}")

    @transaction.atomic
    def seed(self, password: str) -> list[str]:
        user_model = get_user_model()
        system = Actor.system("demo setup")
        logins: list[str] = []

        def user(email: str, **flags: bool) -> Any:
            account, _ = user_model._default_manager.get_or_create(
                username=email, defaults={"email": email}
            )
            account.set_password(password)
            for name, value in flags.items():
                setattr(account, name, value)
            account.save()
            logins.append(email)
            return account

        for name, slug in DEMO_TENANTS:
            tenant = Tenant.objects.filter(slug=slug).first()
            if tenant is None:
                # The demo shows bringing a key: both tenants have the BYOK add-on.
                tenant = tenant_create(name=name, slug=slug, actor=system, byok_addon=True)
                # The README's demo logins change keys with a password alone;
                # owners turn the second factor on on the Members page.
                tenant = tenant_set_second_factor_requirement(
                    tenant=tenant, required=False, actor=system
                )
            if not tenant.byok_addon:
                tenant = tenant_addon_enable(tenant=tenant, actor=system)
            for role in ROLES:
                account = user(f"{role}@{slug}.example")
                if not Membership.objects.filter(tenant=tenant, user=account).exists():
                    membership_add(tenant=tenant, user=account, role=role, actor=system)
        for _, slug in DEMO_TENANTS:
            tenant = Tenant.objects.get(slug=slug)
            if not Record.objects.filter(tenant=tenant).exists():
                records_create(
                    tenant=tenant, items=list(synthetic_records(DEMO_RECORDS, prefix=f"{slug}-"))
                )
            if not StoredObject.objects.filter(tenant=tenant).exists():
                _demo_objects(tenant)
            _demo_history(tenant)
        today = timezone.now().date()
        states = Tenant.objects.values_list("state", flat=True)
        TenantStateDay.objects.bulk_create(
            [
                TenantStateDay(day=today - timedelta(days=back), state=state, tenants=n)
                for back in range(30)
                for state, n in Counter(states).items()
            ],
            ignore_conflicts=True,
        )
        user("support@vendor.example", is_staff=True, is_superuser=False)
        user("admin@vendor.example", is_staff=True, is_superuser=True)
        return logins
