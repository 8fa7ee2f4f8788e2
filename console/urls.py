from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from api import audit_views as audit_api_views
from api.auth import by_method
from console import errors, metrics, views
from console.mfa.views import SignInView
from objects import api_urls as object_api_urls
from records import api_urls as record_api_urls

console_patterns = (
    [
        path("", views.home, name="home"),
        path("sudo/", views.sudo, name="sudo"),
        path("t/<slug:slug>/", views.dashboard, name="dashboard"),
        path("t/<slug:slug>/live/", views.live, name="live"),
    ],
    "console",
)

# /api/v1/: the records, objects and audit endpoints and the OpenAPI document,
# under one namespace.
api_patterns = (
    [
        path("objects/", include(object_api_urls)),
        *record_api_urls.urlpatterns,
        path("audit/events", audit_api_views.audit_events, name="audit_events"),
        # by_method: a wrong method is a JSON 405, like every endpoint of the API.
        path("openapi.json", by_method(GET=views.openapi_json), name="openapi"),
    ],
    "api",
)

urlpatterns = [
    path("", include(console_patterns)),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("login/", SignInView.as_view(), name="login"),
    path("", include("console.mfa.urls")),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("t/<slug:slug>/audit/", include("audit.urls")),
    path("t/<slug:slug>/members/", include("tenants.urls")),
    path("t/<slug:slug>/access/", include("tenants.access_urls")),
    path("support/t/<slug:slug>/", include("console.lockbox_urls")),
    path("t/<slug:slug>/keys/reencrypt/", include("records.urls")),
    path("t/<slug:slug>/keys/", include("keys.urls")),
    path("t/<slug:slug>/data/objects/", include("objects.console_urls")),
    path("t/<slug:slug>/data/", include("console.data_urls")),
    path(errors.API_ROOT.removeprefix("/"), include(api_patterns)),
    path("support/", include("console.support.urls")),
    # The admin's own sign-in would skip the second factor: it is the console's.
    path(
        "admin/login/",
        RedirectView.as_view(pattern_name="login", query_string=True),
        name="admin_login",
    ),
    path("admin/", admin.site.urls),
]

# The console's pages for people, the API's error model under /api/v1/.
handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.page_not_found
handler500 = errors.server_error
