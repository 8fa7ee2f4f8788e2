from __future__ import annotations

from django import forms
from django.utils.html import format_html_join

from audit.models import Outcome
from audit.selectors import AuditFilters

# Offered as suggestions in the filter; any well-formed action name is accepted.
KNOWN_ACTIONS = (
    "api_token.create",
    "api_token.revoke",
    "audit.export",
    "audit.verify",
    "auth.lockout",
    "auth.login",
    "auth.logout",
    "auth.recovery_code",
    "auth.second_factor",
    "auth.sudo",
    "blind_index.rebuilt",
    "blind_index.rotate",
    "byok.enable",
    "byok.enabled",
    "byok.keys_moved",
    "byok.keys_moved_back",
    "byok.remove",
    "byok.removed",
    "dek.create",
    "dek.retire",
    "dek.rotate",
    "kek.confirm_rotation",
    "kek.reject_rotation",
    "kek.rewrap",
    "kek.root_rotate",
    "kek.rotate_now",
    "kek.rotation_done",
    "kek.switch_source",
    "key.copy_destroyed",
    "key.degraded",
    "key.destroy_cancelled",
    "key.destroy_scheduled",
    "key.destroyed",
    "key.expiry_warning",
    "key.recovered",
    "key.restore",
    "key.reupload",
    "key.revoke",
    "key.revoked",
    "key.rotation_detected",
    "key.upload",
    "key_import.create",
    "key_source.register",
    "key_source.test",
    "member.invite",
    "member.invite_accept",
    "member.invite_refused",
    "member.invite_revoke",
    "membership.add",
    "membership.change_role",
    "membership.remove",
    "mfa.enrol",
    "mfa.recovery_codes",
    "mfa.remove",
    "mfa.reset",
    "objects.migration_done",
    "objects.migration_failed",
    "objects.migration_retry",
    "objects.migration_start",
    "objects.migration_stopped",
    "record.delete",
    "records.load",
    "records.reencrypt",
    "records.reencrypt.done",
    "records.reencrypt.failed",
    "tenant.create",
    "tenant.rename",
    "tenant.second_factor_optional",
    "tenant.second_factor_required",
    "tenant.set_dek_cache_ttl",
    "tenant.set_dek_rotation_days",
    "tenant.update",
)
# The filter's suggestions as HTML, made once: the same for every page view.
KNOWN_ACTION_OPTIONS = format_html_join("", '<option value="{}">', ((a,) for a in KNOWN_ACTIONS))


class AuditFilterForm(forms.Form):
    action = forms.RegexField(
        regex=r"^[a-z0-9_.]{1,64}$",
        required=False,
        error_messages={"invalid": "Action names are lowercase words joined by dots."},
    )
    actor = forms.CharField(required=False, max_length=254, label="Actor (email)")
    outcome = forms.ChoiceField(required=False, choices=[("", "Any outcome"), *Outcome.choices])
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput({"type": "date"})
    )
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput({"type": "date"}))
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> AuditFilters:
        data = self.cleaned_data
        return AuditFilters(
            action=data.get("action") or "",
            actor=(data.get("actor") or "").strip(),
            outcome=data.get("outcome") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
