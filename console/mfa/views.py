"""Signing in with a second factor, and a person's own factors.

After a right password, someone with a factor (or who must have one) is not
signed in yet: the session holds a pending sign-in for a few minutes, and
`login()` runs only once the second step passed, with a new session id at
each step.
"""

from __future__ import annotations

from typing import Any

import segno
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.mfa import services, webauthn
from console.mfa.forms import CodeForm, EnrolForm
from console.mfa.services import FactorRefused, TotpEnrolment
from console.mfa.session import (
    PASSWORD_ONLY,
    PENDING_KEY,
    SIGNED_IN_KEY,
    WITH_SECOND_FACTOR,
    pending_start,
    pending_user,
)
from tenants.sudo import safe_next, sudo_grant, sudo_with_own_factor_required


def _me(request: HttpRequest) -> AbstractBaseUser:
    """The signed-in person (the views below are behind login_required)."""
    assert isinstance(request.user, AbstractBaseUser)
    return request.user


class SignInView(LoginView):
    redirect_authenticated_user = True

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.get_user()
        if services.has_factor(user):
            pending_start(self.request, user, self.get_success_url())
            return redirect("mfa:verify")
        if services.must_have_factor(user):
            pending_start(self.request, user, self.get_success_url())
            return redirect("mfa:enrol_sign_in")
        response = super().form_valid(form)
        self.request.session[SIGNED_IN_KEY] = PASSWORD_ONLY
        return response


def _finish_sign_in(request: HttpRequest, user: Any, pending: dict[str, Any]) -> str:
    """Sign the pending person in (a new session id), as having passed the factor."""
    request.session.pop(PENDING_KEY, None)
    login(request, user, backend=pending.get("backend") or None)
    request.session[SIGNED_IN_KEY] = WITH_SECOND_FACTOR
    sudo_grant(request, second_factor=True)
    return safe_next(request, pending.get("next"), reverse("console:home"))


def _no_pending(request: HttpRequest) -> HttpResponse:
    messages.error(request, "Your sign-in has expired. Enter your email and password again.")
    return redirect("login")


@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest) -> HttpResponse:
    found = pending_user(request)
    if found is None:
        return _no_pending(request)
    user, pending = found
    form = CodeForm(request.POST or None)
    assertion = request.POST.get("assertion", "")
    key_error = ""
    if request.method == "POST" and assertion:
        form = CodeForm()
        try:
            webauthn.webauthn_verify(
                request=request, user=user, assertion=assertion, purpose="sign-in"
            )
        except FactorRefused as exc:
            key_error = str(exc)
        else:
            return redirect(_finish_sign_in(request, user, pending))
    elif request.method == "POST" and form.is_valid():
        try:
            used = services.second_factor_verify(
                user=user, code=form.cleaned_data["code"], request=request, purpose="sign-in"
            )
        except FactorRefused as exc:
            form.add_error("code", str(exc))
        else:
            next_url = _finish_sign_in(request, user, pending)
            if used == "recovery code":
                left = services.recovery_codes_left(user)
                messages.warning(
                    request,
                    f"You signed in with a recovery code; {left} are left. "
                    "Make new ones on your Second factor page if you are running low.",
                )
            return redirect(next_url)
    return render(
        request,
        "mfa/verify.html",
        {
            "form": form,
            "email": user.get_username(),
            "key_error": key_error,
            "webauthn_options": (
                webauthn.authentication_options(request, user)
                if webauthn.has_security_key(user)
                else None
            ),
        },
    )


def _enrolment_context(enrolment: TotpEnrolment, form: EnrolForm) -> dict[str, Any]:
    return {
        "form": form,
        "factor_id": enrolment.factor.pk,
        "secret": " ".join(enrolment.secret[i : i + 4] for i in range(0, len(enrolment.secret), 4)),
        "uri": enrolment.uri,
        "qr": segno.make(enrolment.uri, error="m").svg_data_uri(scale=4, border=2),
    }


def _enrol(
    request: HttpRequest, user: Any, *, template: str, extra: dict[str, Any]
) -> tuple[HttpResponse | None, list[str] | None]:
    """The TOTP set-up page, or, once confirmed, (None, the new recovery codes)."""
    form = EnrolForm(request.POST or None)
    enrolment = None
    if request.method == "POST":
        if form.is_valid():
            try:
                _, codes = services.totp_confirm(
                    user=user,
                    factor_id=str(form.cleaned_data["factor"]),
                    code=form.cleaned_data["code"],
                    request=request,
                )
            except FactorRefused as exc:
                form.add_error("code", str(exc))
            else:
                return None, codes
        factor_id = request.POST.get("factor", "")
        try:
            enrolment = services.totp_pending(user, factor_id) if factor_id else None
        except ValueError:  # not a UUID
            enrolment = None
    if enrolment is None:
        enrolment = services.totp_begin(user=user)
    form.initial = {"factor": enrolment.factor.pk}
    context = {**_enrolment_context(enrolment, form), **extra}
    return render(request, template, context), None


@require_http_methods(["GET", "POST"])
def enrol_sign_in(request: HttpRequest) -> HttpResponse:
    """Vendor staff's first sign-in: set up the factor before anything else."""
    found = pending_user(request)
    if found is None:
        return _no_pending(request)
    user, pending = found
    if services.has_factor(user):
        # A password alone never adds a factor to an account that has one.
        return redirect("mfa:verify")
    response, codes = _enrol(request, user, template="mfa/enrol.html", extra={"signing_in": True})
    if response is not None:
        return response
    next_url = _finish_sign_in(request, user, pending)
    return render(request, "mfa/recovery_codes.html", {"codes": codes, "next": next_url})


@login_required
@require_GET
def factors(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "mfa/factors.html",
        {
            "factors": services.factors_of(_me(request)),
            "codes_left": services.recovery_codes_left(_me(request)),
            "must_have": services.must_have_factor(request.user),
            "next": safe_next(request, request.GET.get("next"), ""),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
@sudo_with_own_factor_required
def totp_add(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(
        request, request.GET.get("next") or request.POST.get("next"), reverse("mfa:factors")
    )
    response, codes = _enrol(
        request, request.user, template="mfa/enrol.html", extra={"next": next_url}
    )
    if response is not None:
        return response
    # The code just entered is the second factor passed, for this session too.
    request.session[SIGNED_IN_KEY] = WITH_SECOND_FACTOR
    sudo_grant(request, second_factor=True)
    messages.success(request, "Your authenticator app is set up.")
    if codes:
        return render(request, "mfa/recovery_codes.html", {"codes": codes, "next": next_url})
    return redirect(next_url)


@login_required
@require_POST
@sudo_with_own_factor_required
def remove(request: HttpRequest, factor_id: str) -> HttpResponse:
    try:
        factor = services.factor_remove(user=_me(request), factor_id=factor_id, request=request)
    except FactorRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{factor.name} is no longer a second factor.")
    return redirect("mfa:factors")


@login_required
@require_POST
@sudo_with_own_factor_required
def recovery_codes(request: HttpRequest) -> HttpResponse:
    if not services.has_factor(request.user):
        messages.error(request, "Set up a second factor first; recovery codes stand in for it.")
        return redirect("mfa:factors")
    codes = services.recovery_codes_regenerate(user=_me(request), request=request)
    return render(
        request, "mfa/recovery_codes.html", {"codes": codes, "next": reverse("mfa:factors")}
    )


@login_required
@require_http_methods(["GET", "POST"])
@sudo_with_own_factor_required
def webauthn_add(request: HttpRequest) -> HttpResponse:
    user = _me(request)
    next_url = safe_next(
        request, request.GET.get("next") or request.POST.get("next"), reverse("mfa:factors")
    )
    error = ""
    if request.method == "POST":
        try:
            _, codes = webauthn.webauthn_register(
                request=request,
                user=user,
                credential=request.POST.get("credential", ""),
                name=request.POST.get("name", ""),
            )
        except FactorRefused as exc:
            error = str(exc)
        else:
            request.session[SIGNED_IN_KEY] = WITH_SECOND_FACTOR
            sudo_grant(request, second_factor=True)
            messages.success(request, "Your security key is set up.")
            if codes:
                return render(
                    request, "mfa/recovery_codes.html", {"codes": codes, "next": next_url}
                )
            return redirect(next_url)
    return render(
        request,
        "mfa/webauthn_add.html",
        {
            "options": webauthn.registration_options(request, user),
            "error": error,
            "next": next_url,
        },
    )
