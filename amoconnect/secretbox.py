"""Secrets kept in the store, encrypted: accounts' OAuth tokens and sources' secret settings.

``[store] secret_keys`` (from the environment) lists Fernet keys, comma-separated: the first
encrypts, every one decrypts (``cryptography``'s MultiFernet), so a key is rotated by putting a
new one first, re-sealing what is stored (``amoconnect accounts reseal``), then dropping the old
one. A sealed value is ``enc:`` and the Fernet token (authenticated encryption: a changed value
fails to open instead of opening wrong). Without keys values are kept as given; a sealed value
met without its key is an error naming the fix.
"""

from __future__ import annotations

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigError, StoreError
from .secretnames import replace_secrets
from .store.registry import AccountRecord, SourceRecord

__all__ = ["PREFIX", "SecretBox", "new_key"]

PREFIX = "enc:"


def new_key() -> str:
    """A fresh key for ``[store] secret_keys``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Seals and opens the secrets of records with ``keys`` (none: values stay as they are)."""

    def __init__(self, keys: str | list[str]) -> None:
        listed = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else list(keys)
        listed = [k for k in listed if k]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in listed]) if listed else None
        except ValueError as exc:
            raise ConfigError(
                f"store.secret_keys: not a list of Fernet keys ({exc}); make one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from None

    # -- values ----------------------------------------------------------------------------
    def seal(self, value: str) -> str:
        """``value`` encrypted with the first key (as is without keys, or when empty)."""
        if self._fernet is None or not value or value.startswith(PREFIX):
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, value: str) -> str:
        """``value`` decrypted (a value that was never sealed comes back as is)."""
        if not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise StoreError("the store holds encrypted secrets but store.secret_keys is empty: set the keys")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise StoreError(
                "a secret in the store opens with none of store.secret_keys: add the key that sealed it"
            ) from None

    # -- records ---------------------------------------------------------------------------
    def seal_account(self, account: AccountRecord) -> AccountRecord:
        """``account`` with its tokens sealed."""
        return msgspec.structs.replace(
            account, token=self.seal(account.token), refresh_token=self.seal(account.refresh_token)
        )

    def open_account(self, account: AccountRecord) -> AccountRecord:
        """``account`` with its tokens opened."""
        return msgspec.structs.replace(
            account, token=self.open(account.token), refresh_token=self.open(account.refresh_token)
        )

    def seal_source(self, source: SourceRecord) -> SourceRecord:
        """``source`` with its secret-like settings sealed."""
        return msgspec.structs.replace(source, settings=replace_secrets(source.settings, self.seal))

    def open_source(self, source: SourceRecord) -> SourceRecord:
        """``source`` with its secret-like settings opened."""
        return msgspec.structs.replace(source, settings=replace_secrets(source.settings, self.open))
