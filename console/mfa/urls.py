from __future__ import annotations

from django.urls import path

from console.mfa import views

app_name = "mfa"
urlpatterns = [
    # The second step of signing in (no session yet, a pending sign-in).
    path("login/second-factor/", views.verify, name="verify"),
    path("login/enrol/", views.enrol_sign_in, name="enrol_sign_in"),
    # A signed-in person's own factors.
    path("account/second-factor/", views.factors, name="factors"),
    path("account/second-factor/totp/", views.totp_add, name="totp_add"),
    path("account/second-factor/security-key/", views.webauthn_add, name="webauthn_add"),
    path("account/second-factor/recovery-codes/", views.recovery_codes, name="recovery_codes"),
    path("account/second-factor/<uuid:factor_id>/remove/", views.remove, name="remove"),
]
