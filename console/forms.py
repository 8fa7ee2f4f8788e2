from __future__ import annotations

from django import forms


class SudoForm(forms.Form):
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
        label="Your password",
    )
