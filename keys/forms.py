from __future__ import annotations

from django import forms
from django.conf import settings

from keys.providers.aws_kms import InvalidAwsKmsConfig, parse_kms_arn, parse_role_arn
from keys.uploads import MAX_UPLOAD_BYTES
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
