from __future__ import annotations

from django.urls import path

from console.support import views

app_name = "support"
urlpatterns = [
    path("", views.tenant_list, name="list"),
    path("t/<slug:slug>/", views.tenant_detail, name="tenant"),
    path("t/<slug:slug>/health-check/", views.run_health_check, name="health_check"),
    path("t/<slug:slug>/retry-move/", views.retry_move, name="retry_move"),
    path("t/<slug:slug>/remind-rotation/", views.remind_rotation, name="remind_rotation"),
    path("t/<slug:slug>/addon/enable/", views.addon_enable, name="addon_enable"),
    path("t/<slug:slug>/addon/disable/", views.addon_disable, name="addon_disable"),
]
