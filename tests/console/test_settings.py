from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from console.env import Env

ROOT = Path(__file__).resolve().parents[2]


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEYWARD_", "DJANGO_"))}
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "KEYWARD_MODE": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://keyward@127.0.0.1:5432/keyward"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "ALLOWED_HOSTS": "keyward.example.com",
        "KEYWARD_DATA_DIR": str(tmp_path),
    }


def test_check_deploy_is_clean_in_production_mode(production_env: dict[str, str]) -> None:
    result = run_manage(production_env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "REDIS_URL"])
def test_production_refuses_to_start_without(missing: str, production_env: dict[str, str]) -> None:
    del production_env[missing]
    result = run_manage(production_env, "check")
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_production_is_the_default_mode(production_env: dict[str, str]) -> None:
    del production_env["KEYWARD_MODE"]
    del production_env["SECRET_KEY"]
    result = run_manage(production_env, "check")
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_a_weak_secret_key(production_env: dict[str, str]) -> None:
    production_env["SECRET_KEY"] = "django-insecure-" + "x" * 50
    result = run_manage(production_env, "check")
    assert "SECRET_KEY must be at least 50 random characters" in result.stderr


def test_production_refuses_sqlite(production_env: dict[str, str]) -> None:
    production_env["DATABASE_URL"] = "sqlite:////tmp/x.sqlite3"
    result = run_manage(production_env, "check")
    assert "DATABASE_URL must point at PostgreSQL" in result.stderr


def test_malformed_value_names_the_variable(production_env: dict[str, str]) -> None:
    production_env["KEYWARD_SSL_REDIRECT"] = "maybe"
    result = run_manage(production_env, "check")
    assert result.returncode != 0
    assert "KEYWARD_SSL_REDIRECT='maybe' is not a boolean" in result.stderr


def test_the_encryption_limit_is_capped_well_below_the_nonce_bound(
    production_env: dict[str, str],
) -> None:
    too_many = run_manage({**production_env, "KEYWARD_DEK_MAX_ENCRYPTIONS": str(2**32)}, "check")
    assert too_many.returncode != 0
    assert f"KEYWARD_DEK_MAX_ENCRYPTIONS={2**32} is above the maximum {2**31}" in too_many.stderr
    allowed = run_manage({**production_env, "KEYWARD_DEK_MAX_ENCRYPTIONS": str(2**31)}, "check")
    assert allowed.returncode == 0, allowed.stderr


def test_secret_can_come_from_a_file(production_env: dict[str, str], tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(production_env.pop("SECRET_KEY") + "\n")
    production_env["SECRET_KEY_FILE"] = str(secret_file)
    result = run_manage(production_env, "check")
    assert result.returncode == 0, result.stderr


class TestEnv:
    def test_bool_accepts_only_clear_words(self) -> None:
        env = Env({"A": "true", "B": "off", "C": "yes please"})
        assert env.boolean("A", False) is True
        assert env.boolean("B", True) is False
        assert env.boolean("MISSING", True) is True
        with pytest.raises(ImproperlyConfigured, match="C="):
            env.boolean("C", False)

    def test_int_checks_type_and_bounds(self) -> None:
        env = Env({"N": "12", "BAD": "1e3", "LOW": "0"})
        assert env.integer("N", 1) == 12
        with pytest.raises(ImproperlyConfigured, match="BAD='1e3' is not an integer"):
            env.integer("BAD", 1)
        with pytest.raises(ImproperlyConfigured, match="LOW=0 is below the minimum 1"):
            env.integer("LOW", 5, minimum=1)

    def test_list_refuses_empty_items(self) -> None:
        env = Env({"HOSTS": "a.example, b.example", "HOLES": "a,,b"})
        assert env.strings("HOSTS") == ["a.example", "b.example"]
        with pytest.raises(ImproperlyConfigured, match="HOLES"):
            env.strings("HOLES")

    def test_choice_refuses_unknown(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="MODE='dev' must be one of"):
            Env({"MODE": "dev"}).choice("MODE", "production", ("production", "embedded"))

    def test_unreadable_secret_file_is_an_error(self, tmp_path: Path) -> None:
        env = Env({"S_FILE": str(tmp_path / "nope")})
        with pytest.raises(ImproperlyConfigured, match="S_FILE: cannot read"):
            env.string("S")


def test_security_headers(client, db) -> None:
    response = client.get("/login/")
    assert response["X-Frame-Options"] == "DENY"
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Request-ID"]


def test_production_refuses_a_world_readable_root_key_file(
    production_env: dict[str, str], tmp_path: Path
) -> None:
    from keys.providers.local import RootKeyFile

    path = tmp_path / "root-keys.json"
    RootKeyFile(path).ensure()
    path.chmod(0o644)
    production_env["KEYWARD_ROOT_KEY_FILE"] = str(path)
    result = run_manage(production_env, "check")
    assert result.returncode != 0
    assert f"root key file {path} is readable by others" in result.stderr
    assert f"chmod 600 {path}" in result.stderr


def test_production_refuses_a_corrupt_root_key_file(
    production_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "root-keys.json"
    path.write_text("{not json")
    path.chmod(0o600)
    production_env["KEYWARD_ROOT_KEY_FILE"] = str(path)
    result = run_manage(production_env, "check")
    assert result.returncode != 0
    assert f"root key file {path} is corrupt" in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "KEYWARD_INVITATION_HOURS=0 is below the minimum 1"),
        ("3 days", "KEYWARD_INVITATION_HOURS='3 days' is not an integer"),
        ("721", "KEYWARD_INVITATION_HOURS=721 is above the maximum 720"),
    ],
)
def test_invitation_lifetime_is_checked_at_startup(
    production_env: dict[str, str], value: str, message: str
) -> None:
    result = run_manage({**production_env, "KEYWARD_INVITATION_HOURS": value}, "check")
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KEYWARD_KEK_REWRAP_CONCURRENCY", "0", "is below the minimum 1"),
        ("KEYWARD_KEK_REWRAP_CONCURRENCY", "33", "is above the maximum 32"),
        ("KEYWARD_KEK_REWRAP_CONCURRENCY", "eight", "is not an integer"),
        ("KEYWARD_HEALTH_CHECK_CONCURRENCY", "0", "is below the minimum 1"),
        ("KEYWARD_KEK_REWRAP_BATCH", "0", "is below the minimum 1"),
        ("KEYWARD_KEK_REWRAP_BATCH", "1001", "is above the maximum 1000"),
    ],
)
def test_key_store_concurrency_is_bounded_at_startup(
    production_env: dict[str, str], name: str, value: str, message: str
) -> None:
    result = run_manage({**production_env, name: value}, "check")
    assert result.returncode != 0
    assert f"{name}={value!r}" in result.stderr or f"{name}={value}" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("4", "is below the minimum 5"),
        ("86401", "is above the maximum 86400"),
        ("5m", "is not an integer"),
    ],
)
def test_the_worker_broker_watchdog_limit_is_checked_at_startup(
    production_env: dict[str, str], value: str, message: str
) -> None:
    name = "KEYWARD_WORKER_BROKER_LOST_EXIT_SECONDS"
    result = run_manage({**production_env, name: value}, "check")
    assert result.returncode != 0
    assert name in result.stderr
    assert message in result.stderr


def test_site_url_must_be_an_address(production_env: dict[str, str]) -> None:
    result = run_manage({**production_env, "KEYWARD_SITE_URL": "keyward.example.com"}, "check")
    assert result.returncode != 0
    assert "KEYWARD_SITE_URL must be the console's address" in result.stderr


def test_beat_keeps_its_schedule_in_the_data_folder(settings) -> None:
    from celery import beat

    from console.celery import app

    service = beat.Service(app=app)
    assert Path(app.conf.beat_schedule_filename).parent == Path(settings.DATA_DIR)
    scheduler = service.get_scheduler()
    try:
        written = list(Path(settings.DATA_DIR).glob("celerybeat-schedule*"))
    finally:
        scheduler.close()
    assert written
    assert not list(Path.cwd().glob("celerybeat-schedule*"))


HTTP_PROBE = """
from django.test import Client
client = Client(HTTP_HOST="{host}")
health = client.get("/healthz")
home = client.get("/api/v1/openapi.json")
print("healthz", health.status_code)
print("page", home.status_code, home.get("Location", ""))
from django.conf import settings
print("secure-cookies", settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)
"""


def test_healthz_answers_plain_http_in_production(production_env: dict[str, str]) -> None:
    result = run_manage(
        production_env, "shell", "-c", HTTP_PROBE.format(host="keyward.example.com")
    )
    assert result.returncode == 0, result.stderr
    assert "healthz 200" in result.stdout
    assert "page 301 https://keyward.example.com/api/v1/openapi.json" in result.stdout
    assert "secure-cookies True True" in result.stdout


def test_insecure_http_loopback_serves_plain_http_and_check_deploy_says_so(
    production_env: dict[str, str],
) -> None:
    production_env["ALLOWED_HOSTS"] = "localhost,127.0.0.1,::1"
    production_env["KEYWARD_INSECURE_HTTP_LOOPBACK"] = "true"
    result = run_manage(production_env, "shell", "-c", HTTP_PROBE.format(host="localhost"))
    assert result.returncode == 0, result.stderr
    assert "page 200" in result.stdout
    assert "secure-cookies False False" in result.stdout

    check = run_manage(production_env, "check", "--deploy")
    assert "keyward.W001" in check.stderr + check.stdout
    assert "KEYWARD_INSECURE_HTTP_LOOPBACK is on" in check.stderr + check.stdout


def test_insecure_http_loopback_is_off_by_default_and_silent(
    production_env: dict[str, str],
) -> None:
    check = run_manage(production_env, "check", "--deploy")
    assert "keyward.W001" not in check.stderr + check.stdout


def test_insecure_http_loopback_refuses_a_public_host(production_env: dict[str, str]) -> None:
    production_env["ALLOWED_HOSTS"] = "localhost,keyward.example.com"
    production_env["KEYWARD_INSECURE_HTTP_LOOPBACK"] = "true"
    result = run_manage(production_env, "check")
    assert result.returncode != 0
    assert "KEYWARD_INSECURE_HTTP_LOOPBACK needs ALLOWED_HOSTS to be loopback only" in (
        result.stderr
    )
