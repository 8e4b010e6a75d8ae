"""Users, password hashing, sessions and login throttling — no web framework in here.

Passwords: hashlib.scrypt (memory-hard, stdlib), parameters stored with each hash so they can be
raised later without invalidating old ones. Sessions: a random cookie token; the database keeps
only its SHA-256, so a leaked database holds no usable session. Each session carries its own CSRF
token that state-changing requests must echo in a header.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fleet.errors import AuthError, Forbidden, NotAuthenticated
from fleet.store import Store

Role = Literal["manager", "admin"]
ROLES: tuple[Role, ...] = ("manager", "admin")
# n=2**14, r=8 costs 16 MiB and ~50 ms per attempt: cheap for one login, ruinous for a brute force.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LEN = 10


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=128 * 1024 * 1024)
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


class LoginLimiter:
    """Sliding-window count of failed logins per key (username, client address)."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self._clock()

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login may be tried again; 0 when allowed."""
        now = self._now()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._now()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, username_key: str) -> None:
        with self._lock:
            self._failures.pop(username_key, None)


class Throttled(NotAuthenticated):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class Authenticator:
    def __init__(self, store: Store, session_ttl_s: float, limiter: LoginLimiter) -> None:
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
        if not self.store.set_password_hash(username, hash_password(password)):
            raise AuthError(f"no user {username!r}")

    def login(self, username: str, password: str, client: str) -> tuple[str, Principal]:
        """Returns (cookie token, principal); raises Throttled or AuthError."""
        keys = (f"user:{username.lower()}", f"addr:{client}")
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            raise Throttled(wait)
        user = self.store.get_user(username)
        ok = verify_password(password, user["password_hash"] if user else _DUMMY_HASH)
        if not user or not ok or user.get("disabled_at") is not None:  # disabled: the same answer
            self.limiter.failed(*keys)
            raise NotAuthenticated("wrong username or password")
        self.limiter.succeeded(keys[0])
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
