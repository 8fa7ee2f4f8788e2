"""A tenant protected by each real key store, reached through a fault proxy.

LocalStack (AWS KMS), PyKMIP's server (mutual TLS) and the Key Vault test server
(HTTPS) each sit behind a `FaultProxy`; Keyward is configured with the proxy's
address only, so every byte between them crosses it. `StoreSetup.register`
saves and tests the tenant's key through the console, as a key administrator
does; `enable` then turns protection on and runs the move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.urls import reverse

from keys.models import DataKey, KeySource, SourceKind
from keys.registry import provider_for
from keys.runtime import dek_context, reset_for_tests
from keys.services.sources import byok_enable_run
from tenants.models import Tenant
from tests.conftest import TenantUsers, login
from tests.support.faultproxy import FaultProxy

STORES = ("aws_kms", "kmip", "azure_keyvault")


@dataclass
class StoreSetup:
    kind: str
    proxy: FaultProxy
    register: Callable[[TenantUsers], KeySource]
    # The customer makes a new version of the tenant's key in their own store
    # (directly, not through the proxy); None where only Keyward can (KMIP).
    rotate: Callable[[TenantUsers], None] | None = None
    settings: Any = None

    def short_timeouts(self) -> None:
        """Timeouts for the faults: a stall is waited out in seconds (new providers are built
        with them). Setup runs with the usual ones, so a busy machine does not fail a test."""
        _timeouts(self.settings, 2)

    def enable(self, users: TenantUsers, *, run: bool = True) -> KeySource:
        """Save and Test, Enable (the page's button), and the move when `run`."""
        source = self.register(users)
        response = login(users.owner, sudo=True).post(
            reverse("keys:enable_source", args=[users.tenant.slug, source.pk]), follow=True
        )
        assert "Moving your data keys under your key" in response.content.decode()
        if run:
            byok_enable_run(source_id=str(source.pk))
        source.refresh_from_db()
        return source


def _aws(
    settings: Any, proxy: FaultProxy
) -> tuple[Callable[[TenantUsers], KeySource], Callable[[TenantUsers], None]]:
    from tests.keys.conftest import CUSTOMER_ACCOUNT
    from tests.support.aws import boto_client, create_kms_key

    settings.KEYWARD_AWS_ENDPOINT_URL = proxy.url("http")
    kms = boto_client("kms", CUSTOMER_ACCOUNT)  # the customer's own console: not proxied

    def alias(users: TenantUsers) -> str:
        return f"alias/keyward-{users.tenant.pk.hex[:12]}"

    def register(users: TenantUsers) -> KeySource:
        key_arn = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
        kms.create_alias(AliasName=alias(users), TargetKeyId=key_arn.rsplit("/", 1)[1])
        alias_arn = f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:{alias(users)}"
        body = (
            login(users.key_admin, sudo=True)
            .post(
                reverse("keys:aws_save_and_test", args=[users.tenant.slug]),
                {"key_arn": alias_arn, "role_arn": "", "external_id": ""},
                follow=True,
            )
            .content.decode()
        )
        assert "Every check passed." in body, body
        return _source(users.tenant, SourceKind.AWS_KMS)

    def rotate(users: TenantUsers) -> None:
        new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
        kms.update_alias(AliasName=alias(users), TargetKeyId=new_key.rsplit("/", 1)[1])

    return register, rotate


def _kmip(proxy: FaultProxy) -> Callable[[TenantUsers], KeySource]:
    from tests.keys.test_kmip_source import good_files, save

    def register(users: TenantUsers) -> KeySource:
        assert users.tenant.slug == "acme"  # the page helper posts to acme's
        body = save(login(users.key_admin, sudo=True), port=proxy.port, **good_files())
        assert "Every check passed." in body.content.decode(), body.content.decode()
        return _source(users.tenant, SourceKind.KMIP)

    return register


def _azure(
    settings: Any, azure: Any, proxy: FaultProxy
) -> tuple[Callable[[TenantUsers], KeySource], Callable[[TenantUsers], None]]:
    from tests.keys.test_azure_source import save

    settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT = proxy.port

    def register(users: TenantUsers) -> KeySource:
        assert users.tenant.slug == "acme"
        body = save(login(users.key_admin, sudo=True), azure, vault_url=proxy.url("https"))
        assert "Every check passed." in body.content.decode(), body.content.decode()
        return _source(users.tenant, SourceKind.AZURE_KEYVAULT)

    def rotate(users: TenantUsers) -> None:
        azure.server.add_version(azure.key_name)

    return register, rotate


def _timeouts(settings: Any, seconds: int) -> None:
    settings.KEYWARD_AWS_TIMEOUT_SECONDS = seconds
    settings.KEYWARD_KMIP_TIMEOUT_SECONDS = seconds
    settings.KEYWARD_AZURE_TIMEOUT_SECONDS = seconds


def _source(tenant: Tenant, kind: str) -> KeySource:
    return KeySource.objects.exclude(state__in=["retired", "revoked"]).get(tenant=tenant, kind=kind)


@contextmanager
def proxied_store(kind: str, request: Any, settings: Any) -> Iterator[StoreSetup]:
    """The key store `kind` behind a fault proxy (`short_timeouts` before stalling it)."""
    if kind == "aws_kms":
        from tests.support.aws import aws_endpoint

        request.getfixturevalue("aws_env")
        _timeouts(settings, 5)
        upstream = urlsplit(aws_endpoint())
        with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80) as proxy:
            register, rotate = _aws(settings, proxy)
            reset_for_tests()
            yield StoreSetup(kind, proxy, register, rotate, settings)
    elif kind == "kmip":
        from tests.support.kmip import kmip_settings

        server = kmip_settings()
        _timeouts(settings, 5)
        with FaultProxy(server.host, server.port) as proxy:
            reset_for_tests()
            yield StoreSetup(kind, proxy, _kmip(proxy), settings=settings)
    else:
        azure = request.getfixturevalue("azure")
        _timeouts(settings, 5)
        with FaultProxy("127.0.0.1", azure.server.port) as proxy:
            register, rotate = _azure(settings, azure, proxy)
            reset_for_tests()
            yield StoreSetup(kind, proxy, register, rotate, settings)


def dek_materials(tenant: Tenant) -> dict[int, bytes]:
    """Every live DEK of the tenant, unwrapped by the key its row says it is under.

    A DEK wrapped twice, or under another key than its row names, does not come
    back as its 32 bytes: comparing two of these proves none was.
    """
    out: dict[int, bytes] = {}
    for dek in DataKey.objects.filter(tenant=tenant).select_related("kek_version__source"):
        if dek.state in ("retired", "destroyed"):
            continue
        material = provider_for(dek.kek_version.source).unwrap(
            bytes(dek.wrapped),
            dek_context(str(tenant.pk), dek.version),
            dek.kek_version.provider_version,
        )
        assert len(material) == 32
        out[dek.pk] = material
    return out


def kek_versions(tenant: Tenant) -> set[str]:
    return set(
        DataKey.objects.filter(tenant=tenant)
        .exclude(state__in=["retired", "destroyed"])
        .values_list("kek_version__provider_version", flat=True)
    )


def state(tenant: Tenant) -> str:
    return Tenant.objects.get(pk=tenant.pk).state
