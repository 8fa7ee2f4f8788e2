from __future__ import annotations

from typing import Any

from django import forms

from audit.models import StreamKind


class StreamDestinationForm(forms.Form):
    """Syntax only: the service checks the addresses and the CA certificates."""

    kind = forms.ChoiceField(
        choices=StreamKind.choices, widget=forms.RadioSelect, label="Send events by"
    )
    host = forms.CharField(
        required=False, max_length=253, strip=True, label="Syslog server (host name)"
    )
    port = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=65535,
        label="Syslog TLS port",
        help_text="Often 6514.",
    )
    url = forms.CharField(
        required=False,
        max_length=2048,
        strip=True,
        label="Webhook URL",
        help_text="https:// only; each request is signed (see below).",
    )
    ca_pem = forms.CharField(
        required=False,
        max_length=65536,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="CA certificates (PEM, optional)",
        help_text="If your server's certificate is issued by your own CA. Left empty: "
        "publicly trusted CAs.",
    )
    new_secret = forms.BooleanField(required=False, label="Make a new webhook secret")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind == StreamKind.SYSLOG:
            if not data.get("host") and "host" not in self.errors:
                self.add_error("host", "Enter the syslog server's host name.")
            if data.get("port") is None and "port" not in self.errors:
                self.add_error("port", "Enter the syslog server's TLS port (often 6514).")
        elif kind == StreamKind.WEBHOOK and not data.get("url") and "url" not in self.errors:
            self.add_error("url", "Enter the webhook's https:// URL.")
        return data
