"""Settings for the test suite: the real settings, with test-only variables defaulted.

The suite runs on real PostgreSQL and Redis (see Makefile `test`); only what a test run needs
beyond the environment is set here.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
# A fixed, test-only key: tests read back what they encrypted.
os.environ.setdefault("CONCORD_FERNET_KEYS", "Qe5sJm7XK0y2pTq3wq6q3ZBZ3Q1fFq0m8cQbq8yR3Vw=")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/concord")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
# Every test calls from 127.0.0.1 and throttle counts live in Redis across tests, so the real
# rates would refuse a busy suite at random. tests/dashboards/test_security.py lowers them to
# prove the throttles answer 429.
os.environ.setdefault("CONCORD_API_RATE_USER", "100000/min")
os.environ.setdefault("CONCORD_API_RATE_TOKEN", "100000/min")

from config.settings import *  # noqa: F403

# Hashing a password with the production hasher costs ~200 ms; tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
