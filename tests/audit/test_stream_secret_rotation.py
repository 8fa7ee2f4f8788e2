"""A webhook secret follows the vendor root key: rewrapped on rotation, and a
root key version it depends on cannot be retired before."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from audit.models import StreamDestination
from audit.services import Actor
from audit.streaming.secrets import secret_of
from audit.streaming.services import stream_configure
from keys.runtime import reset_for_tests
from keys.services.rootkeys import root_key_dependents
from tests.conftest import TenantUsers

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _own_root_key_file(settings: Any, tmp_path: Path) -> Any:
    settings.KEYWARD_ROOT_KEY_FILE = str(tmp_path / "root" / "root-keys.json")
    reset_for_tests()
    yield
    reset_for_tests()


def test_the_webhook_secret_moves_to_the_new_root_key(
    acme: TenantUsers, allow_loopback: None
) -> None:
    secret = stream_configure(
        tenant=acme.tenant, actor=SYSTEM, kind="webhook", url="https://127.0.0.1:8443/in"
    )
    assert secret is not None
    call_command("rotate_root_key", stdout=StringIO())
    assert root_key_dependents(1)["audit stream secrets"] == 1

    out = StringIO()
    call_command("rewrap_data_keys", stdout=out)
    assert "audit stream secrets: 1 sealed again" in out.getvalue()
    assert "audit stream secrets" not in root_key_dependents(1)
    call_command("retire_root_key", "root-1", stdout=StringIO())

    reset_for_tests()
    destination = StreamDestination.objects.get()
    assert bytes(destination.sealed_secret or b"").startswith(b"root-2\0")
    assert secret_of(destination) == secret.encode()
