"""API keys: who is calling. A key is only ever compared, hashed or named, never logged or echoed.

Keys come from API_KEYS ("name:key,key") and API_KEYS_FILE (one "name:key" or "key" per line, as
a Docker or Kubernetes secret is mounted). With none, the /v1 API is open and callers are told
apart by their address, for the limits only.

token_hash is the one way the course stores a token it hands out (lessons 05 and 07 import it):
this module loads no LangChain, so a lesson that only hashes a token does not load the agent.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass

from ..settings import AccessSettings

MIN_KEY_CHARS = 16  # a shorter key can be guessed; `secrets.token_urlsafe(32)` gives 43
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiKeyConfigError(ValueError):
    """API_KEYS or API_KEYS_FILE cannot be used: the service refuses to start."""


def token_hash(token: str) -> str:
    """What is stored of a secret token handed to a caller (a run's owner, a student): its SHA-256
    in hex. The store never holds the token itself; a presented one is hashed and compared."""
    return hashlib.sha256(token.encode()).hexdigest()


def fingerprint(key: str) -> str:
    """What a log may say about a key: 8 hex digits of its SHA-256 (useless for guessing it)."""
    return "sha256:" + token_hash(key)[:8]


@dataclass(frozen=True)
class Caller:
    """Who the limits count against: `key:<name>` with keys, `addr:<client address>` without."""

    id: str
    key_name: str | None = None


def _entries(items: list[str], source: str) -> list[tuple[str, str]]:
    """[(name, key)] from "name:key" or "key" items; a key without a name is named by its hash."""
    entries = []
    for item in items:
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = "", name
        name, key = name.strip(), key.strip()
        # A header arrives as latin-1 bytes: a key outside printable ASCII would never match.
        if not (key.isascii() and key.isprintable()):
            raise ApiKeyConfigError(
                f"{source}: a key must be printable ASCII ({name or 'unnamed'})"
            )
        if len(key) < MIN_KEY_CHARS:
            raise ApiKeyConfigError(
                f"{source}: a key shorter than {MIN_KEY_CHARS} characters ({name or 'unnamed'})"
            )
        if name and not _NAME.fullmatch(name):
            raise ApiKeyConfigError(f"{source}: a key name may use A-Z a-z 0-9 _ . - only")
        entries.append((name or fingerprint(key), key))
    return entries


class ApiKeys:
    def __init__(self, entries: list[tuple[str, str]]):
        names = [name for name, _ in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ApiKeyConfigError(f"two keys share a name or a key is listed twice: {duplicates}")
        # Compared as SHA-256 digests: equal lengths, so compare_digest leaks not even the length.
        self._digests = [(name, hashlib.sha256(key.encode()).digest()) for name, key in entries]

    @classmethod
    def from_settings(cls, settings: AccessSettings) -> "ApiKeys":
        entries = []
        if settings.API_KEYS is not None:
            entries += _entries(settings.API_KEYS.get_secret_value().split(","), "API_KEYS")
        if settings.API_KEYS_FILE is not None:
            try:
                lines = settings.API_KEYS_FILE.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ApiKeyConfigError(f"API_KEYS_FILE cannot be read: {exc.strerror}") from None
            entries += _entries(lines, "API_KEYS_FILE")
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._digests]

    def identify(self, presented: str) -> str | None:
        """The name of the key presented, or None. Every key is compared, whatever matches first,
        and each comparison takes the same time: timing tells nothing about how close a guess was.
        """
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, known in self._digests:
            if hmac.compare_digest(digest, known):
                found = name
        return found

    def authenticate(self, token: str | None, client_address: str | None) -> Caller:
        if not self.enabled:
            return Caller(id=f"addr:{client_address or 'unknown'}")
        name = self.identify(token) if token else None
        if name is None:
            from ..web.errors import (
                UnauthorizedError,  # the error layer loads the metrics and LangChain
            )

            raise UnauthorizedError()
        return Caller(id=f"key:{name}", key_name=name)
