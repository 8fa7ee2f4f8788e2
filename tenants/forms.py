from __future__ import annotations

from django import forms

from tenants.models import SUPPORT_ACCESS_MAX_HOURS, Role, SupportAccess


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254)
    # The least access is offered first: a wrong click must not make an owner.
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class AccessAnswerForm(forms.Form):
    comment = forms.CharField(
        label="Comment", max_length=1000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class SupportAccessForm(forms.Form):
    policy = forms.ChoiceField(
        label="Vendor support may read our data", choices=SupportAccess.choices
    )
    approvals = forms.TypedChoiceField(
        label="Approvals needed", choices=[(1, "One"), (2, "Two")], coerce=int
    )
    max_hours = forms.IntegerField(
        label="Longest grant (hours)", min_value=1, max_value=SUPPORT_ACCESS_MAX_HOURS
    )
    approvers = forms.MultipleChoiceField(
        label="Approvers besides the owners", required=False, widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args: object, members: list[tuple[str, str]], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["approvers"].choices = members  # type: ignore[attr-defined]
