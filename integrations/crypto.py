"""Encryption at rest for connection credentials."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialsUnreadable(RuntimeError):
    """Stored credentials cannot be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            "CONCORD_FERNET_KEYS is not set: connection credentials cannot be encrypted. "
            "Generate a key with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"CONCORD_FERNET_KEYS holds an invalid key: {exc}") from exc


def encrypt_text(plaintext: str) -> str:
    return _fernet(tuple(settings.CONCORD_FERNET_KEYS)).encrypt(plaintext.encode()).decode()


def decrypt_text(token: str) -> str:
    try:
        return _fernet(tuple(settings.CONCORD_FERNET_KEYS)).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        # Never include the token or any part of the plaintext in the message.
        raise CredentialsUnreadable(
            "Stored credentials cannot be decrypted with the configured CONCORD_FERNET_KEYS."
        ) from exc
