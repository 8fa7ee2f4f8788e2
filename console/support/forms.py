from __future__ import annotations

from django import forms

from console.support.selectors import SORTS, Listing
from keys.models import SourceKind
from tenants.models import ServiceState


class TenantFilterForm(forms.Form):
    """The list's filters, search and sort, all from the query string."""

    q = forms.CharField(required=False, max_length=100, label="Name or slug")
    state = forms.ChoiceField(
        required=False, choices=[("", "Any state"), *ServiceState.choices], label="State"
    )
    source = forms.ChoiceField(
        required=False, choices=[("", "Any key source"), *SourceKind.choices], label="Key source"
    )
    attention = forms.BooleanField(required=False, label="Needs attention")
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()), label="Sort by")
    dir = forms.ChoiceField(
        required=False, choices=[("asc", "Ascending"), ("desc", "Descending")], label="Order"
    )
    after = forms.CharField(required=False, max_length=400, widget=forms.HiddenInput)

    def listing(self) -> Listing:
        data = self.cleaned_data
        return Listing(
            state=data["state"],
            source=data["source"],
            attention=data["attention"],
            q=data["q"].strip(),
            sort=data["sort"] or "name",
            descending=data["dir"] == "desc",
        )
