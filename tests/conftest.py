from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from audit.services import Actor
from console.mfa.session import SIGNED_IN_KEY, WITH_SECOND_FACTOR
from tenants.models import Role, Tenant
from tenants.services import (
    membership_add,
    tenant_create,
    tenant_set_second_factor_requirement,
)
from tenants.sudo import SECOND_FACTOR_KEY
from tenants.sudo import SESSION_KEY as SUDO_SESSION_KEY

PASSWORD = "correct horse battery staple"

# Hypothesis: `make test` runs a short profile (the property tests together well
# under a minute); HYPOTHESIS_PROFILE=long runs twenty times the examples. No
# example database: a run depends on nothing left behind by an earlier one (CI
# starts from a clean clone), and a failure prints the example and its seed.
_HYPOTHESIS_COMMON: dict[str, Any] = {
    "database": None,
    "deadline": None,  # real servers and RSA-4096 make timing noisy
    "print_blob": True,
    # Tests take the database and the tenants once; each example checks what
    # it may change.
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
hypothesis_settings.register_profile("default", max_examples=50, **_HYPOTHESIS_COMMON)
hypothesis_settings.register_profile("long", max_examples=1000, **_HYPOTHESIS_COMMON)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)


@dataclass
class TenantUsers:
    tenant: Tenant
    owner: Any
    key_admin: Any
    auditor: Any
    viewer: Any


def make_user(email: str, **flags: Any) -> Any:
    return get_user_model().objects.create_user(
        username=email, email=email, password=PASSWORD, **flags
    )


def make_tenant(name: str, slug: str, *, second_factor: bool = False) -> TenantUsers:
    """A tenant with one member of each role; like the demo tenants, its key
    actions ask for the password only unless `second_factor`."""
    system = Actor.system("tests")
    tenant = tenant_create(name=name, slug=slug, actor=system)
    if not second_factor:
        tenant = tenant_set_second_factor_requirement(tenant=tenant, required=False, actor=system)
    users = {}
    for role in (Role.OWNER, Role.KEY_ADMIN, Role.AUDITOR, Role.VIEWER):
        user = make_user(f"{role}@{slug}.test")
        membership_add(tenant=tenant, user=user, role=role, actor=system)
        users[str(role)] = user
    return TenantUsers(tenant=tenant, **users)


@pytest.fixture
def acme(db: None) -> TenantUsers:
    return make_tenant("Acme", "acme")


@pytest.fixture
def globex(db: None) -> TenantUsers:
    return make_tenant("Globex", "globex")


@pytest.fixture
def outsider(db: None) -> Any:
    return make_user("outsider@nowhere.test")


@pytest.fixture
def support(db: None) -> Any:
    return make_user("support@vendor.test", is_staff=True)


def login(user: Any, *, sudo: bool = False, second_factor: bool = True) -> Client:
    """A client signed in as `user`; with sudo, as if they just re-entered their password.

    With `second_factor`, the session is one that passed the second factor at
    sign-in (and, with sudo, just now), as vendor staff's always are.
    """
    client = Client()
    client.force_login(user)  # signing in grants sudo, as a password was just entered
    session = client.session
    if second_factor:
        session[SIGNED_IN_KEY] = WITH_SECOND_FACTOR
        if sudo:
            session[SECOND_FACTOR_KEY] = session[SUDO_SESSION_KEY]
    if not sudo:
        session.pop(SUDO_SESSION_KEY, None)
    session.save()
    return client


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's 1M iterations cost ~0.3 s per user; tests make dozens of users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _byok_addon_for_new_tenants(settings: Any) -> None:
    # The suite brings keys on the tenants it makes; tests of the add-on's gate say otherwise.
    settings.KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS = True


@pytest.fixture(autouse=True)
def _closed_key_store_circuits() -> None:
    # Circuits are per process: one test's unreachable store must not fail the next at once.
    from keys.circuit import reset_circuits

    reset_circuits()


@pytest.fixture(autouse=True)
def _retire_without_grace(settings: Any) -> None:
    # Production waits an hour before retiring a DEK; tests that want it say so.
    settings.KEYWARD_DEK_RETIRE_GRACE_SECONDS = 0


@pytest.fixture(scope="session")
def _keyvault_server() -> Any:
    from tests.servers.keyvault import KeyVaultServer

    with KeyVaultServer() as server:
        yield server


@dataclass
class AzureSetup:
    """The Key Vault test server as the customer's vault, with Keyward's app registered."""

    server: Any
    client_id: str
    secret: str
    key_name: str = "keyward-kek"

    @property
    def vault_url(self) -> str:
        return str(self.server.url)

    @property
    def tenant_id(self) -> str:
        return str(self.server.tenant_id)

    def form(self, **overrides: Any) -> dict[str, Any]:
        data = {
            "vault_url": self.vault_url,
            "key_name": self.key_name,
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "auth_method": "secret",
            "client_secret": self.secret,
        }
        data.update(overrides)
        return data


@pytest.fixture
def azure(_keyvault_server: Any, settings: Any) -> Any:
    """A fresh vault with an RSA-2048 key; settings point Keyward at it."""
    import uuid

    from keys.runtime import reset_for_tests

    server = _keyvault_server
    server.reset()
    settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT = server.port
    settings.KEYWARD_AZURE_AUTHORITY_HOST = server.authority
    settings.KEYWARD_AZURE_CA_BUNDLE = str(server.ca_path)
    settings.KEYWARD_AZURE_TIMEOUT_SECONDS = 2
    client_id = str(uuid.uuid4())
    secret = f"secret-{uuid.uuid4()}"
    server.register_app(client_id, secret=secret)
    setup = AzureSetup(server, client_id, secret)
    server.create_key(setup.key_name)
    reset_for_tests()
    return setup


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The faults the fault proxy injected in this run, by kind (the reliability figures)."""
    from tests.support.faultproxy import TOTALS

    if TOTALS:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(TOTALS.items()))
        terminalreporter.write_line(f"fault proxy: faults injected and survived: {counts}")
