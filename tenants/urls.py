from __future__ import annotations

from django.urls import path

from tenants import views

app_name = "tenants"
urlpatterns = [
    path("", views.member_list, name="members"),
    path("<uuid:membership_id>/role/", views.member_change_role, name="change_role"),
    path("<uuid:membership_id>/remove/", views.member_remove, name="remove"),
    path("second-factor/", views.second_factor_setting, name="second_factor_setting"),
    path("invite/", views.invitation_send, name="invite"),
    path(
        "invitations/<uuid:invitation_id>/revoke/", views.invitation_withdraw, name="revoke_invite"
    ),
    # The emailed link: its token is the only credential, so no sign-in is asked.
    path("join/<str:token>/", views.invitation_join, name="join"),
]
