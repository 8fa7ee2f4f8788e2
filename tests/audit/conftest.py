from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.siem import Rsyslog, WebhookReceiver


@pytest.fixture
def allow_loopback(settings: Any) -> None:
    """The receivers listen on loopback, which the operator must allow."""
    settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture(scope="session")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path_factory.mktemp("rsyslog")) as server:
        yield server


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path / "webhook") as receiver:
        yield receiver
