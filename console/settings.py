"""Keyward settings: one module, read from the environment.

Two modes. `production` (the default, so a forgotten variable fails closed)
requires a real SECRET_KEY, DATABASE_URL, REDIS_URL and ALLOWED_HOSTS and turns
on every transport-security setting. `embedded` runs with no servers at all:
SQLite, a filesystem Celery broker and files under KEYWARD_DATA_DIR; each of
those can still be pointed at a real server (the tests use PostgreSQL and Redis).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from console import datadir
from console.env import Env

env = Env()
BASE_DIR = Path(__file__).resolve().parent.parent

MODE = env.choice("KEYWARD_MODE", "production", ("production", "embedded"))
PRODUCTION = MODE == "production"
DATA_DIR = Path(env.string("KEYWARD_DATA_DIR") or BASE_DIR / "data").resolve()
if not DATA_DIR.is_absolute():  # pragma: no cover - resolve() always makes it absolute
    raise ImproperlyConfigured("KEYWARD_DATA_DIR must be an absolute path")
if not PRODUCTION:
    # Owner only (0700): it holds the secret key, the root key file and the database.
    datadir.create_private_folder(DATA_DIR)


def _embedded_secret_key() -> str:
    """A per-installation key kept in the data folder, created on first run."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        datadir.create_private_folder(DATA_DIR)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(64))
    return path.read_text().strip()


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- Core -----------------------------------------------------------------
if PRODUCTION:
    SECRET_KEY: str = env.required(
        "SECRET_KEY", "production mode signs sessions and tokens with it"
    )
    if len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure"):
        raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters")
    DEBUG = False
    ALLOWED_HOSTS = env.strings("ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set (comma-separated host names)")
    _database_url = env.required("DATABASE_URL", "postgres://user:password@host:5432/keyward")
    REDIS_URL: str | None = env.required("REDIS_URL", "redis://host:6379/0")
else:
    SECRET_KEY = env.string("SECRET_KEY") or _embedded_secret_key()
    DEBUG = env.boolean("KEYWARD_DEBUG", False)
    ALLOWED_HOSTS = env.strings("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
    _database_url = env.string("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'keyward.sqlite3'}"
    REDIS_URL = env.string("REDIS_URL")

CSRF_TRUSTED_ORIGINS = env.strings("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "console",
    "tenants",
    "audit",
    "keys",
    "records",
    "api",
    "objects",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "console.middleware.RequestIdMiddleware",
    "console.middleware.RequestLogMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After authentication: a session that skipped the second factor gets nowhere.
    "console.mfa.middleware.SecondFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Axes must come last so that it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # A checkout's folder; an installed wheel carries it as console/templates.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.shell",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
try:
    _db = dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
if _db["ENGINE"] not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
    raise ImproperlyConfigured("DATABASE_URL must be a postgres:// or sqlite:// URL")
if PRODUCTION and _db["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL in production mode")
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    _sqlite_file = datadir.sqlite_file(_db)
    if _sqlite_file is not None:
        # Made here, 0600, before SQLite would make it with the process's umask.
        datadir.create_private_folder(_sqlite_file.parent)
        datadir.create_private_file(_sqlite_file)
DATABASES = {"default": _db}
# The role that owns the schema, used only by `migrate` (console's override swaps
# it in for that one process). Kept out of DATABASES on purpose: a second alias
# would get its own test database and a place in every `--database` choice,
# while the app role and the owner must always see the same database.
_migrate_url = env.string("MIGRATE_DATABASE_URL")
MIGRATE_DATABASE: dict[str, str] | None = None
if _migrate_url:
    try:
        _owner = dj_database_url.parse(_migrate_url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"MIGRATE_DATABASE_URL is not valid: {exc}") from exc
    _where = (_db["ENGINE"], _db["NAME"], _db["HOST"], _db["PORT"])
    if (_owner["ENGINE"], _owner["NAME"], _owner["HOST"], _owner["PORT"]) != _where:
        raise ImproperlyConfigured("MIGRATE_DATABASE_URL must name DATABASE_URL's database")
    MIGRATE_DATABASE = {"USER": str(_owner["USER"]), "PASSWORD": str(_owner["PASSWORD"] or "")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ------------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Authentication ---------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "login"

AXES_FAILURE_LIMIT = env.integer("KEYWARD_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100)
AXES_COOLOFF_TIME = timedelta(minutes=env.integer("KEYWARD_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Axes logs failed usernames through its own logger; the audit trail is the record.
AXES_ENABLE_ACCESS_FAILURE_LOG = False

# --- Sessions, cookies, transport security ------------------------------------
SESSION_COOKIE_AGE = env.integer("KEYWARD_SESSION_HOURS", 8, minimum=1, maximum=24 * 30) * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Plain HTTP in production, for trying it on a laptop: allowed only when every
# allowed host is loopback, and `check --deploy` says so (keyward.W001).
KEYWARD_INSECURE_HTTP_LOOPBACK = env.boolean("KEYWARD_INSECURE_HTTP_LOOPBACK", False)
_public_hosts = [host for host in ALLOWED_HOSTS if not _is_loopback_host(host)]
if KEYWARD_INSECURE_HTTP_LOOPBACK and PRODUCTION and _public_hosts:
    raise ImproperlyConfigured(
        "KEYWARD_INSECURE_HTTP_LOOPBACK needs ALLOWED_HOSTS to be loopback only "
        f"(localhost, 127.0.0.1, ::1), not {', '.join(_public_hosts)}"
    )
# Load balancers probe over plain HTTP without X-Forwarded-Proto.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# --- Metrics (Prometheus) ------------------------------------------------------
# /metrics answers only with this bearer token; unset, it is a 404. The token
# travels in a header, so by default /metrics is redirected to HTTPS like every
# page; KEYWARD_METRICS_ALLOW_HTTP lets a scraper on a private network reach each
# instance over plain HTTP (each instance adds up its own processes only).
KEYWARD_METRICS_TOKEN = env.string("KEYWARD_METRICS_TOKEN")
if KEYWARD_METRICS_TOKEN is not None and not re.fullmatch(r"[!-~]{32,256}", KEYWARD_METRICS_TOKEN):
    raise ImproperlyConfigured(
        "KEYWARD_METRICS_TOKEN must be 32 to 256 printable characters without spaces "
        "(e.g. the output of `openssl rand -hex 32`)"
    )
if env.boolean("KEYWARD_METRICS_ALLOW_HTTP", False):
    SECURE_REDIRECT_EXEMPT.append(r"^metrics$")
# Every process (gunicorn and Celery workers) writes its metric values to files
# here and /metrics adds them up. prometheus-client takes the folder from
# PROMETHEUS_MULTIPROC_DIR when it is imported, which is after the settings:
# Keyward sets it (an inherited value is replaced, so that a process with
# another data folder never writes into a folder that is not its own).
KEYWARD_METRICS_DIR = Path(env.string("KEYWARD_METRICS_DIR") or DATA_DIR / "metrics").resolve()
try:
    datadir.create_private_folder(KEYWARD_METRICS_DIR)
except OSError as exc:
    raise ImproperlyConfigured(
        f"KEYWARD_METRICS_DIR: cannot create {KEYWARD_METRICS_DIR}: {exc}"
    ) from exc
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(KEYWARD_METRICS_DIR)
if PRODUCTION and KEYWARD_INSECURE_HTTP_LOOPBACK:
    SESSION_COOKIE_SECURE = False
    CSRF_COOKIE_SECURE = False
    SECURE_SSL_REDIRECT = False
    SECURE_HSTS_SECONDS = 0
elif PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.boolean("KEYWARD_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env.integer("KEYWARD_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.boolean("KEYWARD_HSTS_PRELOAD", True)
    if env.boolean("KEYWARD_BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [NONE],
        "object-src": [NONE],
    },
}

# --- Static files -----------------------------------------------------------
STATIC_URL = "/static/"
# A checkout's folder; an installed wheel carries it as console/static instead.
STATICFILES_DIRS = [path for path in [BASE_DIR / "static"] if path.is_dir()]
if PRODUCTION:
    STATIC_ROOT = Path(env.string("KEYWARD_STATIC_ROOT") or BASE_DIR / "staticfiles")
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
else:
    # Serve straight from the source folders: no collectstatic step for `make run`.
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = DEBUG

# --- Internationalisation ---------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- The BYOK add-on ---------------------------------------------------------
# New tenants get the licensed bring-your-own-key module from the start (a
# vendor that includes it in every plan); otherwise support turns it on.
KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS = env.boolean("KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS", False)

# --- Email ------------------------------------------------------------------
DEFAULT_FROM_EMAIL = env.string("KEYWARD_FROM_EMAIL") or "keyward@localhost"
# Where "Request the add-on" and other messages for the vendor's support staff go.
KEYWARD_SUPPORT_EMAIL = env.string("KEYWARD_SUPPORT_EMAIL") or "support@localhost"
if not re.fullmatch(r"[^@\s]+@[^@\s]+", KEYWARD_SUPPORT_EMAIL):
    raise ImproperlyConfigured(
        f"KEYWARD_SUPPORT_EMAIL={KEYWARD_SUPPORT_EMAIL!r} is not an email address"
    )
if env.string("EMAIL_HOST"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = env.required("EMAIL_HOST", "SMTP server")
    EMAIL_PORT = env.integer("EMAIL_PORT", 587, minimum=1, maximum=65535)
    EMAIL_HOST_USER = env.string("EMAIL_HOST_USER") or ""
    EMAIL_HOST_PASSWORD = env.string("EMAIL_HOST_PASSWORD") or ""
    EMAIL_USE_TLS = env.boolean("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = DATA_DIR / "mail"

# --- Celery -----------------------------------------------------------------
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    # A broker that needs no server: messages are files in the data folder.
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Broadcast (worker control) state too, instead of ./control.
        "control_folder": str(_broker_dir / "control"),
    }
# The queue tasks are sent to (workers consume it): one per deployment, or per
# test worker, so that tasks a task sends stay with the workers meant for them.
CELERY_TASK_DEFAULT_QUEUE = env.string("KEYWARD_CELERY_QUEUE") or "celery"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env.integer("KEYWARD_TASK_SOFT_TIME_LIMIT", 3300, minimum=10)
CELERY_TASK_TIME_LIMIT = env.integer("KEYWARD_TASK_TIME_LIMIT", 3600, minimum=10)
CELERY_TASK_IGNORE_RESULT = True
# A worker whose consumer has had no broker connection this long exits, for its
# supervisor to start a fresh one (console/celery.py, BrokerWatchdog).
KEYWARD_WORKER_BROKER_LOST_EXIT_SECONDS = env.integer(
    "KEYWARD_WORKER_BROKER_LOST_EXIT_SECONDS", 300, minimum=5, maximum=86400
)
# Workers log through LOGGING below (JSON lines) instead of Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Beat's state, in the data folder rather than the working directory.
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# How often beat checks every customer key (the revocation bound adds this to the TTL).
KEYWARD_HEALTH_CHECK_SECONDS = env.integer(
    "KEYWARD_HEALTH_CHECK_SECONDS", 60, minimum=5, maximum=3600
)
# Key-store calls one job keeps in flight against one customer's key store:
# a rotation's rewrap (two calls per data key), and a health round across its
# distinct keys. Bounded so that one tenant's job never spends the customer's
# request quota (AWS KMS shares a few thousand calls per second per account
# and region with everything else they run).
KEYWARD_KEK_REWRAP_CONCURRENCY = env.integer(
    "KEYWARD_KEK_REWRAP_CONCURRENCY", 8, minimum=1, maximum=32
)
# Data keys the rewrap after a confirmed rotation writes per transaction: few
# enough that the tenant's row lock is held for milliseconds, many enough that
# 10,000 data keys are a hundred short transactions rather than 10,000. Also how
# far a stopped rewrap has got: it resumes after the last batch written.
KEYWARD_KEK_REWRAP_BATCH = env.integer("KEYWARD_KEK_REWRAP_BATCH", 100, minimum=1, maximum=1000)
KEYWARD_HEALTH_CHECK_CONCURRENCY = env.integer(
    "KEYWARD_HEALTH_CHECK_CONCURRENCY", 8, minimum=1, maximum=32
)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "audit-verify-chains": {"task": "audit.verify_chains", "schedule": 24 * 3600.0},
    "keys-rotate-due-deks": {"task": "keys.rotate_due_deks", "schedule": 3600.0},
    "keys-warn-expiring-keys": {"task": "keys.warn_expiring_keys", "schedule": 3600.0},
    "keys-expire-key-imports": {"task": "keys.expire_key_imports", "schedule": 600.0},
    "keys-rewrap-old-formats": {"task": "keys.rewrap_old_formats", "schedule": 3600.0},
    "keys-run-due-destructions": {"task": "keys.run_due_destructions", "schedule": 600.0},
    "keys-resume-key-jobs": {"task": "keys.resume_key_jobs", "schedule": 300.0},
    "records-resume-reencryptions": {"task": "records.resume_reencryptions", "schedule": 300.0},
    "keys-retire-unused-deks": {"task": "keys.retire_unused_deks", "schedule": 3600.0},
    "keys-sample-key-usage": {"task": "keys.sample_key_usage", "schedule": 3600.0},
    "tenants-expire-support-access": {"task": "tenants.expire_support_access", "schedule": 60.0},
    "objects-resume-migrations": {"task": "objects.resume_migrations", "schedule": 300.0},
    "objects-sweep-orphans": {"task": "objects.sweep_orphans", "schedule": 3600.0},
    "api-purge-idempotency-keys": {"task": "api.purge_idempotency_keys", "schedule": 3600.0},
    "keys-check-key-health": {
        "task": "keys.check_key_health",
        "schedule": float(KEYWARD_HEALTH_CHECK_SECONDS),
    },
}

# --- Logging ----------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # One JSON object per line (console/logs.py): requests and tasks each log one
    # line with their request id, tenant, actor, route or task, status, duration.
    "formatters": {"json": {"()": "console.logs.JsonFormatter"}},
    # A refused request (403, 400) is one line, without the refusing view's traceback.
    "filters": {"client_errors": {"()": "console.logs.ClientErrorWithoutTraceback"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            # Also here for django.security.<ExceptionName>, whose loggers are made
            # on the fly: a filter on a parent logger does not see their records.
            "filters": ["client_errors"],
        }
    },
    "root": {"handlers": ["console"], "level": env.string("KEYWARD_LOG_LEVEL") or "INFO"},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"filters": ["client_errors"]},
        "axes": {"level": "WARNING"},
        # RequestLogMiddleware's line says the same, with the request id and route.
        "django.server": {"level": "WARNING"},
    },
}

# --- Keyward ------------------------------------------------------------------
KEYWARD_SUDO_SECONDS = env.integer("KEYWARD_SUDO_SECONDS", 600, minimum=30, maximum=3600)
# The second factor: the name authenticator apps show next to the code, and the
# WebAuthn relying party (its id is a domain; empty means the host of the page).
KEYWARD_TOTP_ISSUER = (env.string("KEYWARD_TOTP_ISSUER") or "Keyward")[:64]
KEYWARD_WEBAUTHN_RP_ID = (env.string("KEYWARD_WEBAUTHN_RP_ID") or "").strip().lower()
if KEYWARD_WEBAUTHN_RP_ID and ("/" in KEYWARD_WEBAUTHN_RP_ID or ":" in KEYWARD_WEBAUTHN_RP_ID):
    raise ImproperlyConfigured("KEYWARD_WEBAUTHN_RP_ID must be a domain name, like example.com")
KEYWARD_WEBAUTHN_RP_NAME = (env.string("KEYWARD_WEBAUTHN_RP_NAME") or "Keyward")[:64]
KEYWARD_AUDIT_PAGE_SIZE = env.integer("KEYWARD_AUDIT_PAGE_SIZE", 50, minimum=10, maximum=500)
# How long the link in an invitation email works.
KEYWARD_INVITATION_HOURS = env.integer("KEYWARD_INVITATION_HOURS", 72, minimum=1, maximum=30 * 24)
# How long the tenant's approvers have to answer vendor support's access request.
KEYWARD_ACCESS_ANSWER_HOURS = env.integer(
    "KEYWARD_ACCESS_ANSWER_HOURS", 12, minimum=1, maximum=7 * 24
)
# Where people reach the console, for links in emails sent without a request
# (`manage.py tenant_create`): production's first allowed host, unless set.
KEYWARD_SITE_URL = (
    env.string("KEYWARD_SITE_URL")
    or (f"https://{ALLOWED_HOSTS[0].lstrip('.')}" if PRODUCTION else "http://127.0.0.1:8000")
).rstrip("/")
if not KEYWARD_SITE_URL.startswith(("http://", "https://")) or "*" in KEYWARD_SITE_URL:
    raise ImproperlyConfigured(
        "KEYWARD_SITE_URL must be the console's address, like https://keyward.example.com"
    )

# --- Keys ---------------------------------------------------------------------
# The vendor root keys: a JSON file, mode 0600, never in the database.
KEYWARD_ROOT_KEY_FILE = Path(env.string("KEYWARD_ROOT_KEY_FILE") or DATA_DIR / "root-keys.json")
KEYWARD_DEK_CACHE_MAX_ENTRIES = env.integer(
    "KEYWARD_DEK_CACHE_MAX_ENTRIES", 10_000, minimum=10, maximum=1_000_000
)
# How often each process re-reads a tenant's key epoch: revocation reaches
# every process within this interval plus one request.
KEYWARD_KEY_STATE_INTERVAL = (
    env.integer("KEYWARD_KEY_STATE_INTERVAL_MS", 500, minimum=50, maximum=1000) / 1000
)
# AES-GCM with random 96-bit nonces: SP 800-38D allows at most 2^32 messages
# per key. The limit is capped at half of that: the counts are reserved in
# blocks, and a block a rolled-back transaction released is spent before the
# next flush makes it good (keys/runtime.py), so the margin must stay large.
KEYWARD_DEK_MAX_ENCRYPTIONS = env.integer(
    "KEYWARD_DEK_MAX_ENCRYPTIONS", 2**31, minimum=1_000, maximum=2**31
)
KEYWARD_DEK_ROTATE_AT_FRACTION = 0.9
KEYWARD_DEK_RESERVATION_BLOCK = env.integer(
    "KEYWARD_DEK_RESERVATION_BLOCK", 65_536, minimum=1, maximum=2**24
)
KEYWARD_COUNT_FLUSH_SECONDS = env.integer("KEYWARD_COUNT_FLUSH_SECONDS", 10, minimum=1, maximum=600)
# --- Customer keys: AWS KMS ----------------------------------------------------
# Keyward's own AWS identity comes from the usual boto3 chain (AWS_ACCESS_KEY_ID,
# instance role...). The principal is what customers put in their key policy.
KEYWARD_AWS_VENDOR_PRINCIPAL = (
    env.string("KEYWARD_AWS_VENDOR_PRINCIPAL") or "arn:aws:iam::999988887777:role/keyward"
)
KEYWARD_AWS_ENDPOINT_URL = env.string("KEYWARD_AWS_ENDPOINT_URL")  # e.g. LocalStack
if KEYWARD_AWS_ENDPOINT_URL and not KEYWARD_AWS_ENDPOINT_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("KEYWARD_AWS_ENDPOINT_URL must be an http:// or https:// URL")
KEYWARD_AWS_PARTITIONS = env.strings("KEYWARD_AWS_PARTITIONS", ["aws", "aws-cn", "aws-us-gov"])
KEYWARD_AWS_TIMEOUT_SECONDS = env.integer("KEYWARD_AWS_TIMEOUT_SECONDS", 5, minimum=1, maximum=60)

# --- Customer keys: Azure Key Vault ---------------------------------------------
# A vault URL must end with one of these (public cloud, China, US Government,
# Managed HSM); anything else is refused before any connection.
KEYWARD_AZURE_VAULT_SUFFIXES = env.strings(
    "KEYWARD_AZURE_VAULT_SUFFIXES",
    [
        ".vault.azure.net",
        ".vault.azure.cn",
        ".vault.usgovcloudapi.net",
        ".managedhsm.azure.net",
        ".managedhsm.azure.cn",
        ".managedhsm.usgovcloudapi.net",
    ],
)
# Entra ID's authority (empty: the public cloud's login.microsoftonline.com).
KEYWARD_AZURE_AUTHORITY_HOST = env.string("KEYWARD_AZURE_AUTHORITY_HOST") or ""
if KEYWARD_AZURE_AUTHORITY_HOST and not KEYWARD_AZURE_AUTHORITY_HOST.startswith("https://"):
    raise ImproperlyConfigured("KEYWARD_AZURE_AUTHORITY_HOST must be an https:// URL")
# A CA bundle for Key Vault and Entra (empty: the system's trust store).
KEYWARD_AZURE_CA_BUNDLE = env.string("KEYWARD_AZURE_CA_BUNDLE") or ""
# Tests only: admit https://127.0.0.1:<this port> as a vault (the suite's Key
# Vault test server). 0, the default, admits no loopback vault at all.
KEYWARD_AZURE_LOOPBACK_VAULT_PORT = env.integer(
    "KEYWARD_AZURE_LOOPBACK_VAULT_PORT", 0, minimum=0, maximum=65535
)
if PRODUCTION and KEYWARD_AZURE_LOOPBACK_VAULT_PORT:
    raise ImproperlyConfigured("KEYWARD_AZURE_LOOPBACK_VAULT_PORT is for tests; unset it")
KEYWARD_AZURE_TIMEOUT_SECONDS = env.integer(
    "KEYWARD_AZURE_TIMEOUT_SECONDS", 5, minimum=1, maximum=60
)

# --- Customer keys: KMIP servers -------------------------------------------------
# A KMIP host resolving into a loopback, private or link-local network is
# refused unless its address is in one of these networks (CIDR), e.g. a
# customer's KMIP server reached over a private link. "acme:10.20.0.0/16"
# allows a network to one tenant (by slug) only; a bare CIDR to every tenant.


def _allowed_networks(name: str, entries: list[str]) -> list[str]:
    """CIDRs ("10.20.0.0/16", every tenant) or "<slug>:<CIDR>" (one tenant's)."""
    for entry in entries:
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            network = entry.partition(":")[2]
        else:
            continue
        try:
            ipaddress.ip_network(network)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {entry!r} is not a network like 10.20.0.0/16 or acme:10.20.0.0/16"
            ) from None
    return entries


KEYWARD_KMIP_ALLOWED_NETWORKS = _allowed_networks(
    "KEYWARD_KMIP_ALLOWED_NETWORKS", env.strings("KEYWARD_KMIP_ALLOWED_NETWORKS", [])
)
KEYWARD_KMIP_TIMEOUT_SECONDS = env.integer("KEYWARD_KMIP_TIMEOUT_SECONDS", 5, minimum=1, maximum=60)

# --- Customer keys: every key store ---------------------------------------------
# A circuit per key store endpoint (AWS region, vault, KMIP server): this many
# calls failing in a row stop this process calling it for a back-off that
# starts at KEYWARD_KEY_STORE_BACKOFF_SECONDS and doubles up to the maximum
# (with jitter); calls meanwhile fail at once (tenant degraded, never revoked).
KEYWARD_KEY_STORE_CIRCUIT_FAILURES = env.integer(
    "KEYWARD_KEY_STORE_CIRCUIT_FAILURES", 5, minimum=1, maximum=1000
)
KEYWARD_KEY_STORE_BACKOFF_SECONDS = env.integer(
    "KEYWARD_KEY_STORE_BACKOFF_SECONDS", 2, minimum=1, maximum=600
)
KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS = env.integer(
    "KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS", 60, minimum=1, maximum=3600
)
if KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS < KEYWARD_KEY_STORE_BACKOFF_SECONDS:
    raise ImproperlyConfigured(
        "KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS must be at least KEYWARD_KEY_STORE_BACKOFF_SECONDS"
    )

# --- Audit streaming to a tenant's SIEM ---------------------------------------
# Destinations are checked like KMIP hosts: loopback, private and link-local
# addresses are refused unless in one of these networks (same forms as above).
KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = _allowed_networks(
    "KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS",
    env.strings("KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS", []),
)
# A CA bundle for destinations' certificates (empty: the system's trust store);
# a destination may bring its own CA certificates instead.
KEYWARD_AUDIT_STREAM_CA_BUNDLE = env.string("KEYWARD_AUDIT_STREAM_CA_BUNDLE") or ""
# How often beat looks for events to deliver (also the delay of a new event).
KEYWARD_AUDIT_STREAM_INTERVAL_SECONDS = env.integer(
    "KEYWARD_AUDIT_STREAM_INTERVAL_SECONDS", 5, minimum=1, maximum=300
)
KEYWARD_AUDIT_STREAM_BATCH_SIZE = env.integer(
    "KEYWARD_AUDIT_STREAM_BATCH_SIZE", 100, minimum=1, maximum=1000
)
KEYWARD_AUDIT_STREAM_TIMEOUT_SECONDS = env.integer(
    "KEYWARD_AUDIT_STREAM_TIMEOUT_SECONDS", 10, minimum=1, maximum=120
)
# A failed delivery is retried after 2^failures seconds (with jitter), at most this.
KEYWARD_AUDIT_STREAM_BACKOFF_MAX_SECONDS = env.integer(
    "KEYWARD_AUDIT_STREAM_BACKOFF_MAX_SECONDS", 300, minimum=0, maximum=3600
)
# A destination is paused (banner, email to the owners) after this many failures
# in a row, or once it has been failing for this long, whichever comes first.
KEYWARD_AUDIT_STREAM_PAUSE_AFTER_FAILURES = env.integer(
    "KEYWARD_AUDIT_STREAM_PAUSE_AFTER_FAILURES", 10, minimum=1, maximum=1000
)
KEYWARD_AUDIT_STREAM_PAUSE_AFTER_SECONDS = env.integer(
    "KEYWARD_AUDIT_STREAM_PAUSE_AFTER_SECONDS", 3600, minimum=60, maximum=7 * 86400
)
CELERY_BEAT_SCHEDULE["audit-stream-due"] = {
    "task": "audit.stream_due",
    "schedule": float(KEYWARD_AUDIT_STREAM_INTERVAL_SECONDS),
}

# Where uploaded (wrapped) customer keys live: sealed under the vendor root key
# ("local"), or imported into EXTERNAL-origin keys in the vendor's AWS KMS.
KEYWARD_UPLOAD_KEY_STORE = env.choice("KEYWARD_UPLOAD_KEY_STORE", "local", ("local", "aws_kms"))
KEYWARD_UPLOAD_AWS_REGION = env.string("KEYWARD_UPLOAD_AWS_REGION") or "eu-west-1"

# A DEK is retired only after it has been decrypt-only this long: longer than
# any process can hold a stale view of the current DEK (Redis state expiry).
KEYWARD_DEK_RETIRE_GRACE_SECONDS = env.integer(
    "KEYWARD_DEK_RETIRE_GRACE_SECONDS", 3700, minimum=0, maximum=30 * 86400
)

# Waiting period between an owner's "destroy" and the crypto-shredding itself.
KEYWARD_DESTROY_WAIT_DAYS = env.integer("KEYWARD_DESTROY_WAIT_DAYS", 7, minimum=1, maximum=90)

# Records per re-encryption batch (one read, one COPY, one UPDATE, one commit).
# 10,000 keeps per-batch costs small against per-row ones (about 10 MB in
# memory per batch in flight, two in flight).
KEYWARD_REENCRYPT_BATCH = env.integer(
    "KEYWARD_REENCRYPT_BATCH", 10_000, minimum=100, maximum=100_000
)
# Record-id ranges a re-encryption job is cut into, each a Celery task with its
# own checkpoint: as many workers as there are parts can run one job at once.
# More parts than workers evens out ranges that hold more rows than others.
KEYWARD_REENCRYPT_PARTS = env.integer("KEYWARD_REENCRYPT_PARTS", 8, minimum=1, maximum=256)
# A job is cut into fewer parts when it has fewer rows: each part gets at least
# this many batches, so that a part's fixed costs (its task, its pass's start
# and drain, its second worker's connection) stay small against its rows.
KEYWARD_REENCRYPT_PART_BATCHES = env.integer(
    "KEYWARD_REENCRYPT_PART_BATCHES", 10, minimum=1, maximum=1000
)

# --- Encrypted objects -------------------------------------------------------------
# Where blobs live: folders under KEYWARD_OBJECT_ROOT (embedded default) or S3.
# Vendor-managed tenants share one location under a tenant prefix; a BYOK tenant
# gets its own folder, or its own bucket "<dedicated prefix>-<16 hex of the tenant id>".
KEYWARD_OBJECT_STORE = env.choice("KEYWARD_OBJECT_STORE", "filesystem", ("filesystem", "s3"))
KEYWARD_OBJECT_ROOT = Path(env.string("KEYWARD_OBJECT_ROOT") or DATA_DIR / "objects").resolve()
KEYWARD_OBJECT_S3_BUCKET = env.string("KEYWARD_OBJECT_S3_BUCKET") or "keyward-objects"
KEYWARD_OBJECT_S3_DEDICATED_PREFIX = (
    env.string("KEYWARD_OBJECT_S3_DEDICATED_PREFIX") or "keyward-tenant"
)
KEYWARD_OBJECT_S3_REGION = env.string("KEYWARD_OBJECT_S3_REGION") or "eu-west-1"
KEYWARD_OBJECT_S3_ENDPOINT_URL = env.string("KEYWARD_OBJECT_S3_ENDPOINT_URL")  # e.g. LocalStack
if KEYWARD_OBJECT_S3_ENDPOINT_URL and not KEYWARD_OBJECT_S3_ENDPOINT_URL.startswith(
    ("http://", "https://")
):
    raise ImproperlyConfigured("KEYWARD_OBJECT_S3_ENDPOINT_URL must be an http:// or https:// URL")
KEYWARD_OBJECT_MAX_BYTES = env.integer(
    "KEYWARD_OBJECT_MAX_BYTES", 100 * 1024 * 1024, minimum=1, maximum=5 * 1024**4
)
# Objects moved at a time by a migration (threads: hashing, I/O and AES-GCM on whole
# segments release the GIL).
KEYWARD_OBJECT_MIGRATE_THREADS = env.integer(
    "KEYWARD_OBJECT_MIGRATE_THREADS", 4, minimum=1, maximum=32
)
# A stored version that no row names (a write that died before its row
# committed, a replaced version whose delete failed, a finished move's
# leftovers) is deleted once sweeps have seen it unnamed for this long: far
# longer than the moment between a version being stored and its row committing.
KEYWARD_OBJECT_ORPHAN_GRACE_SECONDS = env.integer(
    "KEYWARD_OBJECT_ORPHAN_GRACE_SECONDS", 3600, minimum=0, maximum=30 * 86400
)

# Tenant data API (api/).
KEYWARD_API_MAX_BODY_BYTES = env.integer(
    "KEYWARD_API_MAX_BODY_BYTES", 1_048_576, minimum=1024, maximum=2_500_000
)
KEYWARD_API_RETRY_AFTER_SECONDS = env.integer(
    "KEYWARD_API_RETRY_AFTER_SECONDS", 30, minimum=1, maximum=3600
)
KEYWARD_API_IDEMPOTENCY_HOURS = env.integer(
    "KEYWARD_API_IDEMPOTENCY_HOURS", 24, minimum=1, maximum=7 * 24
)
KEYWARD_API_INDEX_REBUILD_BATCH = env.integer(
    "KEYWARD_API_INDEX_REBUILD_BATCH", 2_000, minimum=10, maximum=50_000
)
