from __future__ import annotations

from django import forms

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
