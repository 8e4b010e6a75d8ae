"""Users, password hashing, sessions and login throttling — no web framework in here.

Passwords: argon2id (argon2-cffi), parameters stored with each hash so they can be raised later; hashes
from before (hashlib.scrypt) still verify and are rehashed at the user's next login. Sessions: a random
cookie token; the database keeps only its SHA-256, so a leaked database holds no usable session. Each
session carries its own CSRF token that state-changing requests must echo in a header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import argon2

from fleet.errors import AuthError, Forbidden, NotAuthenticated
from fleet.store import Store

Role = Literal["manager", "admin"]
ROLES: tuple[Role, ...] = ("manager", "admin")
MIN_PASSWORD_LEN = 10
# argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: t=3, 64 MiB, p=4); the parameters travel
# in each hash, so raising them later rehashes old users at their next login.
_HASHER = argon2.PasswordHasher()
# Hashes written before argon2: hashlib.scrypt, still verified (then rehashed on login).
_LEGACY_SCRYPT_MAXMEM = 128 * 1024 * 1024


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    if encoded.startswith("scrypt$"):
        return _verify_scrypt(password, encoded)
    try:
        return _HASHER.verify(encoded, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(encoded: str) -> bool:
    """True for a legacy scrypt hash or argon2 parameters below today's."""
    if not encoded.startswith("$argon2"):
        return True
    try:
        return _HASHER.check_needs_rehash(encoded)
    except argon2.exceptions.InvalidHashError:
        return True


def _verify_scrypt(password: str, encoded: str) -> bool:
    try:
        _scheme, n, r, p, salt, digest = encoded.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=_LEGACY_SCRYPT_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Verifying against this when the user does not exist keeps the timing of "no such user" and
# "wrong password" the same, so the login form does not reveal which usernames exist.
_DUMMY_HASH = hash_password("not-a-real-password-000")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    csrf_token: str

    def require(self, role: Role) -> None:
        if role == "admin" and self.role != "admin":
            raise Forbidden("this action needs the admin role")


class LoginThrottle:
    """Wrong passwords per (client address, username). The first `free_failures` cost nothing; each one after
    that doubles the wait before the next try of that user from that address (`base_delay_s`, 2x, 4x, ... at
    most `max_delay_s`). There is no lockout: once the wait has passed a right password logs in, and other
    users (or this user from elsewhere) are never slowed. Failures are forgotten `forget_after_s` after the
    last one, or on success."""

    def __init__(self, free_failures: int = 3, base_delay_s: float = 1.0, max_delay_s: float = 60.0,
                 forget_after_s: float = 900.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self._clock = clock
        self._max_keys = max_keys
        self._state: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (failures, last failure)
        self._lock = threading.Lock()

    @staticmethod
    def _key(address: str, username: str) -> tuple[str, str]:
        return address, username.strip().lower()

    def delay_after(self, failures: int) -> float:
        """The wait that `failures` consecutive wrong passwords impose before the next try."""
        extra = failures - self.free_failures
        if extra <= 0:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** min(extra - 1, 30)))

    def retry_after(self, address: str, username: str) -> float:
        """Seconds until this user may try again from this address; 0 when allowed now."""
        now = self._clock()
        with self._lock:
            failures, last = self._state.get(self._key(address, username), (0, 0.0))
        if failures == 0 or now - last > self.forget_after_s:
            return 0.0
        return max(0.0, last + self.delay_after(failures) - now)

    def failed(self, address: str, username: str) -> None:
        now = self._clock()
        key = self._key(address, username)
        with self._lock:
            failures, last = self._state.get(key, (0, 0.0))
            if now - last > self.forget_after_s:
                failures = 0
            if key not in self._state and len(self._state) >= self._max_keys:
                self._state = {k: v for k, v in self._state.items() if now - v[1] <= self.forget_after_s}
            self._state[key] = (failures + 1, now)

    def succeeded(self, address: str, username: str) -> None:
        with self._lock:
            self._state.pop(self._key(address, username), None)


class Throttled(NotAuthenticated):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


class Authenticator:
    def __init__(self, store: Store, session_ttl_s: float, limiter: LoginThrottle) -> None:
        self.store = store
        self.session_ttl_s = session_ttl_s
        self.limiter = limiter

    def add_user(self, username: str, role: str, password: str) -> None:
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_LEN:
            raise AuthError(f"password must have at least {MIN_PASSWORD_LEN} characters")
        if not username or len(username) > 64 or not username.replace("_", "").replace(".", "").replace(
                "-", "").replace("@", "").isalnum():
            raise AuthError("username: 1-64 letters, digits, . _ - @")
        self.store.add_user(username, role, hash_password(password))

    def reset_password(self, username: str, password: str) -> None:
        """A new password for an existing user; their sessions end."""
        if len(password) < MIN_PASSWORD_LEN:
            raise AuthError(f"password must have at least {MIN_PASSWORD_LEN} characters")
        if not self.store.reset_password_hash(username, hash_password(password)):
            raise AuthError(f"no user {username!r}")

    def login(self, username: str, password: str, client: str) -> tuple[str, Principal]:
        """Returns (cookie token, principal); raises Throttled or AuthError. `client` is the caller's address."""
        wait = self.limiter.retry_after(client, username)
        if wait > 0:
            raise Throttled(wait)
        user = self.store.get_user(username)
        ok = verify_password(password, user["password_hash"] if user else _DUMMY_HASH)
        if not user or not ok or user.get("disabled_at") is not None:  # disabled: the same answer
            self.limiter.failed(client, username)
            raise NotAuthenticated("wrong username or password")
        self.limiter.succeeded(client, username)
        if needs_rehash(user["password_hash"]):
            # The password is at hand only now: move an old scrypt hash (or weaker parameters) to argon2id.
            self.store.set_password_hash(user["username"], hash_password(password))
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.store.create_session(_token_hash(token), user["username"], csrf, self.session_ttl_s)
        return token, Principal(user["username"], user["role"], csrf)

    def resolve(self, token: str | None) -> Principal:
        if not token:
            raise NotAuthenticated("not logged in")
        row = self.store.get_session(_token_hash(token))
        if not row:
            raise NotAuthenticated("session expired or unknown")
        return Principal(row["username"], row["role"], row["csrf_token"])

    def logout(self, token: str) -> None:
        self.store.delete_session(_token_hash(token))
