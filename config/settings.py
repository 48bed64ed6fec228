"""Concord settings: everything comes from the environment, with an embedded default.

Unset variables give the embedded default (SQLite in WAL mode, kombu's filesystem transport), so one
machine with only Python runs the whole portal. Production sets DATABASE_URL, REDIS_URL,
DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and CONCORD_FERNET_KEYS; nothing else changes.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import django_stubs_ext
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF

from config.env import (
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
)

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
# Runtime state of the embedded default (SQLite file, broker folders, generated keys).
VAR_DIR = Path(env_str("CONCORD_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)

# From the environment in production; on the embedded default a random key kept in var/.
SECRET_KEY = env_secret(
    "DJANGO_SECRET_KEY", VAR_DIR / "secret_key", lambda: secrets.token_urlsafe(50)
)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "csp",
    "django_htmx",
    "template_partials",
    "integrations",
    "exceptions",
    "dashboards",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # After WhiteNoise: static files need no policy; every page, error page and API answer gets one.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.middleware.PagesLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: turns a locked-out sign-in into config.lockout's answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboards.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", ""), sqlite_path=VAR_DIR / "concord.sqlite3"
    )
}
# Keep connections open between requests and Celery tasks: opening a PostgreSQL connection costs
# a few milliseconds, more than many of the tasks themselves.
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60)
# Off (Django's default): a check is a round trip before every request and task, a fifth of a
# webhook's cost. A connection the server dropped (a restart) fails the first request or task
# that uses it and is closed right after; the webhook receiver retries that delivery itself, and
# the sweepers re-run a failed task's work. Turn on where connections die often (a pooler
# with idle timeouts).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("DATABASE_CONN_HEALTH_CHECKS", False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CONCORD_CACHE_PREFIX", "concord"),
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Axes' backend first: it refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "config.auth_backends.OneQueryModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboards:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the app folders when collectstatic has not been run (embedded default).
WHITENOISE_USE_FINDERS = True

# --- Security. Defaults are the production ones; the embedded default on plain-HTTP loopback
# turns the HTTPS-only ones off through variables (see Makefile `run`).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Sessions read through the cache (Redis, or files in the embedded default) and written through
# to the database: a page's session costs no query once read.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): everything from this origin only, no inline script or
# style anywhere (templates link static files), no framing, forms post only here. The API docs
# page adds data: images for Swagger UI's icons (integrations/api/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "manifest-src": [SELF],
        "form-action": [SELF],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
    }
}

# --- Lockout after repeated failed sign-ins (django-axes; config/lockout.py answers). Counted
# per username and client address together, so a stranger cannot lock a colleague out from
# elsewhere; 5 failures lock that pair for 15 minutes from the last one; a success clears them.
AXES_FAILURE_LIMIT = env_int("CONCORD_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("CONCORD_LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Attempts refused while locked do not restart the clock: the lock lifts when it said it would.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "config.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "config.lockout.client_ip"
# Proxies in front of the web processes that append to X-Forwarded-For (0: trust REMOTE_ADDR
# only). Read by the API's throttles and, through config.lockout.client_ip, by the lockout.
NUM_PROXIES = env_int("DJANGO_NUM_PROXIES", 0)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Keys that encrypt connection credentials at rest (Fernet, urlsafe base64 of 32 bytes). The
# first key encrypts; all of them decrypt, so a key can be rotated by prepending a new one.
CONCORD_FERNET_KEYS = env_list("CONCORD_FERNET_KEYS", []) or [
    env_secret(
        "CONCORD_FERNET_KEYS", VAR_DIR / "fernet_key", lambda: Fernet.generate_key().decode()
    )
]

# --- REST API
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous call then gets 401 with a WWW-Authenticate challenge.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["integrations.api.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "integrations.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Per user (per address before sign-in) on every endpoint: 1,200/min is 20 calls a second
    # sustained, past what any page or paging script needs. The token endpoint has its own, per
    # address: 10/min lets a person retype, and leaves a guesser 14,400 tries a day at most,
    # spread over usernames since the lockout stops five failures on any one. Over the rate:
    # 429 with Retry-After (integrations/api/throttles.py).
    "DEFAULT_THROTTLE_CLASSES": ["integrations.api.throttles.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("CONCORD_API_RATE_USER", "1200/min"),
        "token": env_str("CONCORD_API_RATE_TOKEN", "10/min"),
    },
    "NUM_PROXIES": NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Concord API",
    "DESCRIPTION": "Canonical records, cross-references and connections of the Concord portal.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs, like the API's index, only for users who hold a role.
    "SERVE_PERMISSIONS": ["integrations.api.auth.HasRole"],
    # No call to the online validator (nor to any host but ours).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name for the role choice set used by connections, ownership rules and sync fields.
    "ENUM_NAME_OVERRIDES": {"SystemRoleEnum": "integrations.models.base.SystemRole"},
}

# --- Celery. The database is the source of truth; the broker is only a doorbell.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        # A message not acknowledged within this time is redelivered. No countdown we use is
        # longer than this, so a delayed task is never delivered twice because of it.
        "visibility_timeout": 3600,
    }
else:
    BROKER_DIR = VAR_DIR / "broker"
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "config.beat.HeartbeatDatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
# Periodic tasks are defined in code (config/celery.py) and stored by django-celery-beat.
# Queues: `inbound` for processing what the vendors sent (webhooks, replays), `celery` for
# general work, `outbox.<vendor>` per target system. A worker started with every queue
# (CONCORD_WORKER_QUEUES) does everything; `make run` and the benchmarks start the pools below.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"integrations.process_inbound_batch": {"queue": "inbound"}}
CONCORD_OUTBOX_QUEUES = ["outbox.salesforce", "outbox.harvest", "outbox.xero"]
CONCORD_WORKER_QUEUES = ["inbound", "celery", *CONCORD_OUTBOX_QUEUES]
# The worker pools: name -> (queues, processes). A delivery's processing must never wait behind
# the dispatch tasks (each may hold its process up to the dispatcher's 20 s budget, and three
# target systems can hold three processes): the `inbound` pool takes nothing else. Nor must a
# dispatch task wait behind a billing run or a sweep: in a 100k-entry run the second Xero
# tenant's invoices waited 9 s for a process of the general pool, busy with the billing run, the
# milestone sweep and the first tenant's dispatch; the `outbox` pool takes only the outbox
# queues. The `worker` pool takes every queue, so a burst uses its idle processes as well.
# 2 + 3 + 3 processes on 2 CPUs: most of a task's time is spent waiting for PostgreSQL or a vendor.
# SQLite (the embedded default) takes one writer at a time: one pool of 2 processes there.
CONCORD_WORKER_POOLS: dict[str, tuple[list[str], int]] = (
    {
        "inbound": (["inbound"], env_int("CONCORD_INBOUND_CONCURRENCY", 2)),
        "worker": (CONCORD_WORKER_QUEUES, env_int("CONCORD_WORKER_CONCURRENCY", 3)),
        "outbox": (CONCORD_OUTBOX_QUEUES, env_int("CONCORD_OUTBOX_CONCURRENCY", 3)),
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql")
    else {"worker": (CONCORD_WORKER_QUEUES, env_int("CONCORD_WORKER_CONCURRENCY", 2))}
)
# An in-flight outbox row whose worker has not renewed its claim for this long is handed back.
# Longer than one vendor call (read timeout 30 s would be safer, but a killed worker's work must
# resume within 30 s; a duplicate re-send is harmless thanks to idempotency keys).
CONCORD_OUTBOX_LEASE_S = env_int("CONCORD_OUTBOX_LEASE_S", 20)
CONCORD_MAX_LINES_PER_INVOICE = env_int("CONCORD_MAX_LINES_PER_INVOICE", 100)
# Time entries a billing run takes per transaction (integrations/workflows/time_to_erp.py).
CONCORD_BILLING_CHUNK = env_int("CONCORD_BILLING_CHUNK", 5000)
# Records per page of a poll's reads; 0: each vendor's maximum (tests set a small one).
CONCORD_POLL_PAGE_SIZE = env_int("CONCORD_POLL_PAGE_SIZE", 0)
CONCORD_OUTBOX_BACKOFF_CAP_S = env_int("CONCORD_OUTBOX_BACKOFF_CAP_S", 60)
# The outbox's retry budget (integrations/sync/outbox.py): a row parks only after this many
# attempts AND this long since its first one.
CONCORD_OUTBOX_MIN_ATTEMPTS = env_int("CONCORD_OUTBOX_MIN_ATTEMPTS", 15)
CONCORD_OUTBOX_RETRY_WINDOW_S = env_int("CONCORD_OUTBOX_RETRY_WINDOW_S", 3600)

# --- Reconciliation (integrations/workflows/reconciliation.py): the months compared, how long
# approved work may stay unbilled, and how long a billed event may take to reach the ERP.
CONCORD_RECONCILIATION_MONTHS = env_int("CONCORD_RECONCILIATION_MONTHS", 12)
CONCORD_UNBILLED_SLA_DAYS = env_int("CONCORD_UNBILLED_SLA_DAYS", 40)
CONCORD_POST_GRACE_HOURS = env_int("CONCORD_POST_GRACE_HOURS", 24)
# Unbilled expenses are gaps only once Concord bills expenses (issue 11, item 2): until then
# every approved expense would be one, and the finance queue would hold nothing else.
CONCORD_RECONCILE_EXPENSES = env_bool("CONCORD_RECONCILE_EXPENSES", False)

# --- Expected work that did not happen (integrations/workflows/checks.py, beat's
# "check-expected-work"): a workflow run at one step for longer than this is stuck (the PMO
# provisioning board highlights the same runs), and a polling schedule beat has not sent for
# this many of its intervals has not run. Approved time not in the ERP uses the unbilled SLA above.
CONCORD_RUN_STUCK_AFTER_MINUTES = env_int("CONCORD_RUN_STUCK_AFTER_MINUTES", 60)
CONCORD_POLL_NOT_RUN_INTERVALS = env_int("CONCORD_POLL_NOT_RUN_INTERVALS", 3)

# --- Health: how old a heartbeat may be before /healthz calls the component down. The worker
# beats every 10 s and beat ticks at least every 5 s, so 45 s tolerates a few missed beats.
CONCORD_HEARTBEAT_INTERVAL_S = env_int("CONCORD_HEARTBEAT_INTERVAL_S", 10)
CONCORD_HEARTBEAT_MAX_AGE_S = env_int("CONCORD_HEARTBEAT_MAX_AGE_S", 45)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("CONCORD_LOG_LEVEL", "INFO")},
    # httpx logs every request URL at INFO (query strings included); SyncAttempt rows keep the
    # record of each call instead.
    # axes logs each failed sign-in at WARNING (kept) and each successful one at INFO.
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
