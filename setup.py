"""Packaging that pyproject.toml cannot say: the checkout's top-level templates/
and static/ folders go into the wheel as console/templates and console/static,
where Django finds them in an installed console app (APP_DIRS, the app static
finder) without a checkout.
"""

from __future__ import annotations

from setuptools import find_packages, setup

APPS = ["console", "tenants", "keys", "audit", "records", "api", "objects", "crypto", "telemetry"]

setup(
    packages=[
        *find_packages(include=[pattern for app in APPS for pattern in (app, f"{app}.*")]),
        "console.templates",
        "console.static",
    ],
    package_dir={"console.templates": "templates", "console.static": "static"},
)
