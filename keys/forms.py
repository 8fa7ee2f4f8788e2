from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from keys.providers.aws_kms import InvalidAwsKmsConfig, parse_kms_arn, parse_role_arn
from keys.services.uploads import MAX_UPLOAD_BYTES
from tenants.models import DEK_TTL_MAX, DEK_TTL_MIN


class CacheTtlForm(forms.Form):
    ttl = forms.IntegerField(
        label="Key cache lifetime (seconds)",
        min_value=DEK_TTL_MIN,
        max_value=DEK_TTL_MAX,
        error_messages={
            "min_value": f"Choose at least {DEK_TTL_MIN} seconds.",
            "max_value": f"Choose at most {DEK_TTL_MAX} seconds (24 hours).",
            "invalid": "Enter a whole number of seconds.",
        },
    )


class RotateDekForm(forms.Form):
    reason = forms.CharField(max_length=200, required=False, label="Reason (for the audit trail)")


class AwsKmsSourceForm(forms.Form):
    """A customer's AWS KMS key by ARN, and optionally a role for Keyward to assume.

    Everything is validated before anything is saved or any AWS call is made.
    """

    key_arn = forms.CharField(
        label="Key ARN or alias ARN",
        max_length=2048,
        help_text="arn:aws:kms:<region>:<account>:key/<key id> or …:alias/<alias name>",
    )
    role_arn = forms.CharField(
        label="Role ARN (optional)",
        max_length=2048,
        required=False,
        help_text="A role in your account that Keyward assumes, with the external id below.",
    )

    def clean_key_arn(self) -> str:
        value = self.cleaned_data["key_arn"].strip()
        try:
            parse_kms_arn(value, allowed_partitions=settings.KEYWARD_AWS_PARTITIONS)
        except InvalidAwsKmsConfig as exc:
            raise forms.ValidationError(f"This is not a usable KMS key ARN: {exc}.") from None
        return value

    def clean_role_arn(self) -> str:
        value = self.cleaned_data["role_arn"].strip()
        if value:
            try:
                parse_role_arn(value, allowed_partitions=settings.KEYWARD_AWS_PARTITIONS)
            except InvalidAwsKmsConfig as exc:
                raise forms.ValidationError(f"This is not a usable role ARN: {exc}.") from None
        return value

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        key_arn, role_arn = data.get("key_arn"), data.get("role_arn")
        if key_arn and role_arn:
            key_partition = str(key_arn).split(":")[1]
            if str(role_arn).split(":")[1] != key_partition:
                self.add_error("role_arn", "The role must be in the same AWS partition as the key.")
        return data


class KeyUploadForm(forms.Form):
    """The wrapped key and its import token, checked for size before they are read."""

    wrapped_key = forms.FileField(label="CustomerEncryptionKey.bin (your wrapped key)")
    token = forms.FileField(label="ImportToken.bin (from the import parameters)")
    expires_at = forms.DateTimeField(
        label="Key expires (optional, UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="At this time Keyward stops using the key, as if you had revoked it.",
    )

    def _small(self, name: str, limit: int) -> bytes:
        upload = self.cleaned_data[name]
        if upload.size > limit:
            raise forms.ValidationError(
                f"This file is {upload.size} bytes; at most {limit} bytes are accepted. "
                "Upload the file named in the import instructions."
            )
        return bytes(upload.read())

    def clean_wrapped_key(self) -> bytes:
        return self._small("wrapped_key", MAX_UPLOAD_BYTES)

    def clean_token(self) -> bytes:
        return self._small("token", MAX_UPLOAD_BYTES)


class SecretInput(forms.PasswordInput):
    """A secret field: never rendered back, not remembered by the browser."""

    def __init__(self) -> None:
        super().__init__(render_value=False, attrs={"autocomplete": "new-password"})


MAX_PEM_BYTES = 64 * 1024


def _pem_upload(form: forms.Form, name: str) -> bytes | None:
    """An uploaded PEM file, size-checked before it is read; None when not uploaded."""
    upload = form.cleaned_data.get(name)
    if not upload:
        return None
    if upload.size > MAX_PEM_BYTES:
        raise forms.ValidationError(
            f"This file is {upload.size} bytes; a PEM file is at most {MAX_PEM_BYTES} bytes."
        )
    data = bytes(upload.read())
    if b"-----BEGIN " not in data:
        raise forms.ValidationError("This is not a PEM file (it has no -----BEGIN line).")
    return data


class AzureKeyVaultSourceForm(forms.Form):
    """A key in the customer's Azure Key Vault, and the app registration Keyward signs in as.

    Secrets are required when none are saved yet; otherwise leaving them empty
    keeps the saved ones (they are never shown back).
    """

    vault_url = forms.CharField(
        label="Vault URL",
        max_length=300,
        help_text="https://<vault name>.vault.azure.net (or a Managed HSM URL)",
    )
    key_name = forms.CharField(label="Key name", max_length=127)
    tenant_id = forms.CharField(label="Directory (tenant) ID", max_length=36)
    client_id = forms.CharField(label="Application (client) ID", max_length=36)
    auth_method = forms.ChoiceField(
        label="Sign in with",
        choices=[("secret", "A client secret"), ("certificate", "A client certificate")],
        initial="secret",
        widget=forms.RadioSelect,
    )
    client_secret = forms.CharField(
        label="Client secret", max_length=256, required=False, widget=SecretInput(), strip=False
    )
    client_certificate = forms.FileField(
        label="Client certificate (PEM with its private key)", required=False
    )

    # The validators below come from keys.providers.azure_keyvault, whose Azure SDK
    # takes most of a second to import: they load when an Azure form is validated,
    # not with every page.

    def __init__(self, *args: Any, saved_method: str | None = None, **kwargs: Any) -> None:
        """`saved_method`: how the saved credentials sign in, if any are saved."""
        super().__init__(*args, **kwargs)
        self.saved_method = saved_method
        self.certificate_thumbprint = ""

    def clean_vault_url(self) -> str:
        from keys.providers.azure_keyvault import InvalidAzureConfig, validate_vault_url  # noqa: PLC0415

        try:
            return validate_vault_url(self.cleaned_data["vault_url"].strip(), **azure_url_policy())
        except InvalidAzureConfig as exc:
            raise forms.ValidationError(str(exc)) from None

    def _validated(self, name: str, check: Any) -> str:
        from keys.providers.azure_keyvault import InvalidAzureConfig  # noqa: PLC0415

        try:
            return str(check(self.cleaned_data[name].strip()))
        except InvalidAzureConfig as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_key_name(self) -> str:
        from keys.providers.azure_keyvault import validate_key_name  # noqa: PLC0415

        return self._validated("key_name", validate_key_name)

    def clean_tenant_id(self) -> str:
        from keys.providers.azure_keyvault import validate_tenant_id  # noqa: PLC0415

        return self._validated("tenant_id", validate_tenant_id)

    def clean_client_id(self) -> str:
        from keys.providers.azure_keyvault import validate_client_id  # noqa: PLC0415

        return self._validated("client_id", validate_client_id)

    def clean_client_certificate(self) -> bytes | None:
        from keys.providers.azure_keyvault import InvalidAzureConfig, validate_client_certificate  # noqa: PLC0415

        pem = _pem_upload(self, "client_certificate")
        if pem is not None:
            try:
                self.certificate_thumbprint = validate_client_certificate(pem)
            except InvalidAzureConfig as exc:
                raise forms.ValidationError(str(exc)) from None
        return pem

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        method = data.get("auth_method")
        keeps_saved = method == self.saved_method
        if method == "secret" and not data.get("client_secret") and not keeps_saved:
            self.add_error("client_secret", "Enter the application's client secret.")
        if method == "certificate" and not data.get("client_certificate") and not keeps_saved:
            self.add_error(
                "client_certificate",
                "Upload the application's certificate with its private key (PEM).",
            )
        return data

    def credentials(self) -> dict[str, str] | None:
        """The secrets entered now, or None to keep the saved ones."""
        data = self.cleaned_data
        if data["auth_method"] == "secret" and data.get("client_secret"):
            return {"client_secret": data["client_secret"]}
        if data["auth_method"] == "certificate" and data.get("client_certificate"):
            return {"client_certificate_pem": data["client_certificate"].decode()}
        return None


def azure_url_policy() -> dict[str, Any]:
    """What validate_vault_url allows here: the configured suffixes."""
    return {
        "allowed_suffixes": tuple(settings.KEYWARD_AZURE_VAULT_SUFFIXES),
        "allow_loopback_port": settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT or None,
    }


class KmipSourceForm(forms.Form):
    """The customer's KMIP server, reached with mutual TLS and optionally a username.

    Files left empty keep the saved ones; every upload is validated together
    with the saved files before anything is stored.
    """

    host = forms.CharField(label="KMIP server host", max_length=253)
    port = forms.IntegerField(
        label="Port",
        min_value=1,
        max_value=65535,
        initial=5696,
        error_messages={
            "min_value": "Enter a port from 1 to 65535.",
            "max_value": "Enter a port from 1 to 65535.",
        },
    )
    ca_cert = forms.FileField(label="Server CA certificate (PEM)", required=False)
    client_cert = forms.FileField(label="Client certificate (PEM)", required=False)
    client_key = forms.FileField(label="Client private key (PEM)", required=False)
    passphrase = forms.CharField(
        label="Private key passphrase",
        max_length=1024,
        required=False,
        widget=SecretInput(),
        strip=False,
        help_text="Leave empty if the key is not encrypted.",
    )
    username = forms.CharField(label="KMIP username (optional)", max_length=256, required=False)
    password = forms.CharField(
        label="KMIP password", max_length=1024, required=False, widget=SecretInput(), strip=False
    )

    def clean_host(self) -> str:
        host = self.cleaned_data["host"].strip().lower()
        if not host:
            raise forms.ValidationError("Enter the KMIP server's host name.")
        return host

    def clean_ca_cert(self) -> bytes | None:
        return _pem_upload(self, "ca_cert")

    def clean_client_cert(self) -> bytes | None:
        return _pem_upload(self, "client_cert")

    def clean_client_key(self) -> bytes | None:
        return _pem_upload(self, "client_key")
