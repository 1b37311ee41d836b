"""Account secrets encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The key comes from :func:`correspond.settings.load_secret_key`. Plaintext secrets exist only in
memory, on their way to a server; they are never logged, never in a ``repr``, never returned by
the API or the CLI.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from correspond.errors import ConfigError
from correspond.settings import Settings, load_secret_key

__all__ = ["SecretBox"]


class SecretBox:
    """Encrypts and decrypts account secrets with one key."""

    __slots__ = ("_fernet", "_missing")

    def __init__(self, key: bytes) -> None:
        self._missing: str | None = None
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "the secret key is not a valid Fernet key (32 url-safe base64-encoded bytes)"
            ) from exc

    @classmethod
    def missing(cls, why: str) -> SecretBox:
        """A box without its key: encrypting and decrypting raise :class:`ConfigError` ``why``.

        Everything that needs no secret (listing, removing accounts, reading the mirror) still
        works; encrypting is refused too, so no new secret is sealed under a key that differs
        from the one the stored secrets need.
        """
        box = cls(Fernet.generate_key())
        box._missing = why
        return box

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box for ``settings.secret_key`` or ``<data_dir>/secret.key``."""
        return cls(load_secret_key(settings))

    def encrypt(self, secret: str) -> bytes:
        """An authenticated token for ``secret``; a fresh IV each time."""
        if self._missing is not None:
            raise ConfigError(self._missing)
        return self._fernet.encrypt(secret.encode("utf-8"))

    def opens(self, token: bytes) -> bool:
        """Whether this key decrypts ``token`` (a secret sealed with the same key)."""
        if self._missing is not None:
            return False
        try:
            self._fernet.decrypt(token)
        except InvalidToken:
            return False
        return True

    def decrypt(self, token: bytes) -> str:
        """The secret back; :class:`ConfigError` when the key changed or the token is corrupt."""
        if self._missing is not None:
            raise ConfigError(self._missing)
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken as exc:
            raise ConfigError(
                "cannot decrypt a stored secret: the secret key changed or the data is corrupt; "
                "restore the old key or enter the password again"
            ) from exc

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
