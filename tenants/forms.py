from __future__ import annotations

from django import forms

from tenants.models import Role


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
