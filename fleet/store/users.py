"""Dashboard users and their login sessions."""

from __future__ import annotations

import time

from fleet.store.engine import Engine, Row


class UsersAndSessions(Engine):
    """Users (name, role, password hash) and sessions (keyed by the SHA-256 of the cookie token)."""

    def add_user(self, username: str, role: str, password_hash: str) -> None:
        self.execute("INSERT INTO users (username, role, password_hash, created_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (username) DO UPDATE SET role = excluded.role, "
                     "password_hash = excluded.password_hash", (username, role, password_hash, time.time()))

    def set_password_hash(self, username: str, password_hash: str) -> None:
        self.execute("UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username))

    def get_user(self, username: str) -> Row | None:
        rows = self.query("SELECT * FROM users WHERE username = ?", (username,))
        return rows[0] if rows else None

    def list_users(self) -> list[Row]:
        return self.query("SELECT username, role, created_at, disabled_at FROM users ORDER BY username")

    def set_user_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (ending the user's sessions) or enable a user; False when there is no such user."""
        with self.transaction() as cur:
            found = self._x(cur, "UPDATE users SET disabled_at = ? WHERE username = ?",
                            (time.time() if disabled else None, username)).rowcount
            if disabled:
                self._x(cur, "DELETE FROM sessions WHERE username = ?", (username,))
        return found > 0

    def reset_password_hash(self, username: str, password_hash: str) -> bool:
        """A new password (ending the user's sessions); False when there is no such user."""
        with self.transaction() as cur:
            found = self._x(cur, "UPDATE users SET password_hash = ? WHERE username = ?",
                            (password_hash, username)).rowcount
            self._x(cur, "DELETE FROM sessions WHERE username = ?", (username,))
        return found > 0

    def create_session(self, token_hash: str, username: str, csrf: str, ttl_s: float) -> None:
        now = time.time()
        with self.transaction() as cur:
            self._x(cur, "DELETE FROM sessions WHERE expires_at < ?", (now,))
            self._x(cur, "INSERT INTO sessions (token_hash, username, csrf_token, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?)", (token_hash, username, csrf, now, now + ttl_s))

    def get_session(self, token_hash: str) -> Row | None:
        rows = self.query("SELECT s.username, s.csrf_token, s.expires_at, u.role FROM sessions s "
                          "JOIN users u ON u.username = s.username WHERE s.token_hash = ? AND s.expires_at > ? "
                          "AND u.disabled_at IS NULL",
                          (token_hash, time.time()))
        return rows[0] if rows else None

    def delete_session(self, token_hash: str) -> None:
        self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
