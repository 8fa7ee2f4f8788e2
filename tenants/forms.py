from __future__ import annotations

from django import forms

from tenants.models import Role


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254)
    # The least access is offered first: a wrong click must not make an owner.
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)
