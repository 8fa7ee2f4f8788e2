"""The revocation bound, measured with real processes against LocalStack.

A separate process keeps decrypting a record of a tenant protected by an AWS
KMS key; the key is disabled in KMS; the time until that process can no
longer decrypt must stay within the bound the dashboard states: the DEK
cache TTL plus the health-check interval, plus 5 seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.urls import reverse

from tenants.models import Tenant
from tests.conftest import login
from tests.support.worker import ROOT, worker_database_url

TTL = 10


@pytest.mark.django_db(transaction=True)
def test_a_disabled_key_stops_another_process_within_the_bound(byok, settings) -> None:
    tenant = byok["acme"].tenant
    Tenant.objects.filter(pk=tenant.pk).update(dek_cache_ttl=TTL)
    bound = TTL + settings.KEYWARD_HEALTH_CHECK_SECONDS
    page = login(byok["acme"].owner).get(reverse("console:dashboard", args=["acme"]))
    assert f"at most <strong>{bound} seconds</strong>" in page.content.decode()  # TTL + interval

    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "KEYWARD_AWS_ENDPOINT_URL": settings.KEYWARD_AWS_ENDPOINT_URL,
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/support/decrypt_loop.py"), "acme",
         str(byok["records"][0].uid), "0.2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ok"
        byok["kms"].disable_key(KeyId=byok["key_arn"])
        cut = time.time()
        line = ""
        while not line.startswith("denied"):
            line = process.stdout.readline().strip()
            assert line, "the decrypting process ended unexpectedly"
        _, when, error = line.split()
        elapsed = float(when) - cut
    finally:
        process.kill()
        process.wait()
    assert error in ("KeyAccessDenied", "AwsKeyAccessDenied", "KeyRevoked")
    assert elapsed <= bound + 5, f"readable for {elapsed:.1f} s after the cut (bound {bound} s)"
    print(f"measured revocation: {elapsed:.1f} s (TTL {TTL} s, bound {bound} s)")
