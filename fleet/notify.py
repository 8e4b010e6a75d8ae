"""Telling people: per-site webhook and SMTP e-mail for each new alert, and escalation when an alert
stays unacknowledged too long.

The notifier is a background thread that works from the database, never from the ingest writer: ingest
only wakes it (`wake()`, a threading.Event), so a slow mail server or a dead webhook can never hold up
storing events. Each alert is claimed with `UPDATE ... WHERE notified_at IS NULL` (and `escalated_at`
for escalations), so two fleet servers on one database never both send, and an alert ingested while
the notifier was busy is picked up on its next pass. Time is an argument (`run_once(now)`), so tests
drive escalation with a clock instead of sleeping.

Rules live in a TOML file (`notify_file` setting), e.g.::

    [smtp]
    host = "mail.example.org"
    port = 587
    starttls = true
    sender = "liftguard@example.org"
    username = "liftguard"
    password_file = "/etc/liftguard-fleet/smtp-password"

    [[sites]]
    site = "Harbour View"          # "*" = every site
    email = ["desk@harbour.example"]
    webhook = "https://chat.example/hooks/abc"
    escalate_after_min = 10
    escalate_email = ["manager@harbour.example"]
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.errors import ConfigError
from fleet.alerts import ALERT_LABELS, ALERT_TYPES
from fleet.config import zone_for
from fleet.store import Row, Store

log = logging.getLogger(__name__)

Kind = Literal["alert", "escalation"]


class SmtpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(25, ge=1, le=65535)
    sender: str = Field(min_length=3, description="the From address")
    starttls: bool = Field(False, description="upgrade with STARTTLS (port 587)")
    ssl: bool = Field(False, description="implicit TLS (port 465)")
    username: str | None = None
    password_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)


class SiteRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(min_length=1, description='a site name as units report it, or "*" for every site')
    email: list[str] = Field(default_factory=list, max_length=50)
    webhook: str | None = Field(None, pattern=r"^https?://", description="POSTed JSON for every alert")
    escalate_after_min: float | None = Field(None, gt=0, le=7 * 24 * 60,
                                             description="escalate an alert unacknowledged this long")
    escalate_email: list[str] = Field(default_factory=list, max_length=50)
    escalate_webhook: str | None = Field(None, pattern=r"^https?://")


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    smtp: SmtpSettings | None = None
    sites: list[SiteRule] = Field(default_factory=list)
    # An alert the notifier first sees later than this after it arrived (a server that was down) is
    # marked as told, not sent: a stale page at 3 a.m. helps nobody.
    max_delay_s: float = Field(3600.0, gt=0, le=7 * 86400)
    retries: int = Field(2, ge=0, le=10, description="further tries of a failed delivery")

    def rules_for(self, site: str | None) -> list[SiteRule]:
        return [r for r in self.sites if r.site == "*" or r.site == (site or "Unassigned")]

    def escalation_min(self) -> float | None:
        minutes = [r.escalate_after_min for r in self.sites if r.escalate_after_min is not None]
        return min(minutes) if minutes else None


def load_notify_config(path: Path | None) -> NotifyConfig:
    """The rules in `path` (TOML); no file: nobody is e-mailed, but the notifier still runs (and marks)."""
    if path is None:
        return NotifyConfig()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"notification rules {path}: {exc}") from None
    try:
        config = NotifyConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"notification rules {path}: {where}: {first['msg']}") from None
    if any(r.email or r.escalate_email for r in config.sites) and config.smtp is None:
        raise ConfigError(f"notification rules {path}: e-mail recipients need an [smtp] section")
    return config


@dataclass(frozen=True)
class Delivery:
    """One message handed to a transport: what, about which alert, to whom, and whether it went."""

    kind: Kind
    event_id: str
    channel: Literal["email", "webhook"]
    target: str
    ok: bool
    error: str = ""


Mailer = Callable[[EmailMessage], None]
Poster = Callable[[str, dict[str, Any]], None]


def smtp_mailer(cfg: SmtpSettings) -> Mailer:
    def send(message: EmailMessage) -> None:
        password = cfg.password_file.read_text().strip() if cfg.password_file else None
        smtp_class = smtplib.SMTP_SSL if cfg.ssl else smtplib.SMTP
        with smtp_class(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username and password:
                smtp.login(cfg.username, password)
            smtp.send_message(message)

    return send


def http_poster(timeout_s: float = 10.0) -> Poster:
    def post(url: str, body: dict[str, Any]) -> None:
        response = httpx.post(url, json=body, timeout=timeout_s)
        response.raise_for_status()

    return post


@dataclass
class NotifierStats:
    sent: int = 0
    failed: int = 0
    alerts_told: int = 0
    escalated: int = 0
    skipped_stale: int = 0
    deliveries: list[Delivery] = field(default_factory=list)  # the latest few, newest last

    def record(self, delivery: Delivery) -> None:
        if delivery.ok:
            self.sent += 1
        else:
            self.failed += 1
        self.deliveries = [*self.deliveries[-99:], delivery]


class Notifier:
    """Sends what the rules say for new and overdue alerts; `start()` runs it in a thread."""

    def __init__(self, store: Store, config: NotifyConfig, *, timezone: str = "UTC", public_url: str | None = None,
                 clock: Callable[[], float] = time.time, mailer: Mailer | None = None,
                 poster: Poster | None = None, poll_s: float = 5.0, retry_wait_s: float = 1.0) -> None:
        self.store = store
        self.config = config
        self.zone = timezone
        self.public_url = (public_url or "").rstrip("/")
        self.clock = clock
        self.mailer = mailer or (smtp_mailer(config.smtp) if config.smtp else None)
        self.poster = poster or http_poster()
        self.poll_s = poll_s
        self.retry_wait_s = retry_wait_s
        self.stats = NotifierStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Called by the ingest writer after a commit: returns at once."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self.run_once(self.clock())
            except Exception:  # the database may be away for a while; try again next pass
                log.exception("notifier pass failed")

    # -- one pass -----------------------------------------------------------------------------
    def run_once(self, now: float) -> list[Delivery]:
        """Tell about new alerts, then escalate overdue ones; returns what was sent (or tried)."""
        return self._new_alerts(now) + self._overdue_alerts(now)

    def _alert_filter(self) -> tuple[str, list[Any]]:
        return f"e.phase = 'start' AND e.type IN ({','.join('?' * len(ALERT_TYPES))})", list(ALERT_TYPES)

    def _claim(self, column: str, event_id: str, now: float, extra: str = "") -> bool:
        return self.store.execute(f"UPDATE events SET {column} = ? WHERE event_id = ? AND {column} IS NULL {extra}",
                                  (now, event_id)) > 0

    _DETAILS = ("SELECT e.event_id, e.unit_id, e.type, e.ts, e.received_at, e.cls, e.confidence, e.snapshot_id, "
                "u.site, u.building, u.elevator FROM events e LEFT JOIN units u ON u.unit_id = e.unit_id ")

    def _new_alerts(self, now: float) -> list[Delivery]:
        cond, params = self._alert_filter()
        # One statement claims a batch: another server's UPDATE waits for these rows and then finds them told.
        claimed = self.store.query(
            "UPDATE events SET notified_at = ? WHERE notified_at IS NULL AND event_id IN (SELECT e.event_id FROM "
            f"events e WHERE e.notified_at IS NULL AND {cond} ORDER BY e.received_at LIMIT 500) RETURNING event_id",
            [now, *params])
        # Events that are not alerts (updates, ends) are marked too, so the partial index stays small.
        self.store.execute("UPDATE events SET notified_at = ? WHERE notified_at IS NULL AND NOT (phase = 'start' "
                           f"AND type IN ({','.join('?' * len(ALERT_TYPES))}))", [now, *ALERT_TYPES])
        if not claimed:
            return []
        ids = [r["event_id"] for r in claimed]
        rows = self.store.query(f"{self._DETAILS} WHERE e.event_id IN ({','.join('?' * len(ids))}) "
                                "ORDER BY e.received_at", ids)
        out: list[Delivery] = []
        for row in rows:
            if now - float(row["received_at"]) > self.config.max_delay_s:
                self.stats.skipped_stale += 1
                continue
            self.stats.alerts_told += 1
            for rule in self.config.rules_for(row["site"]):
                out += self._send(row, "alert", rule.email, rule.webhook)
        return out

    def _overdue_alerts(self, now: float) -> list[Delivery]:
        shortest = self.config.escalation_min()
        if shortest is None:
            return []
        cond, params = self._alert_filter()
        rows = self.store.query(
            f"{self._DETAILS} WHERE e.escalated_at IS NULL AND e.acknowledged_at IS NULL AND e.received_at <= ? "
            f"AND {cond} ORDER BY e.received_at LIMIT 200", [now - shortest * 60, *params])
        out: list[Delivery] = []
        for row in rows:
            rules = [r for r in self.config.rules_for(row["site"]) if r.escalate_after_min is not None]
            due = [r for r in rules if now - float(row["received_at"]) >= (r.escalate_after_min or 0) * 60]
            if rules and not due:
                continue  # this site waits longer; looked at again next pass
            if not self._claim("escalated_at", row["event_id"], now, "AND acknowledged_at IS NULL"):
                continue  # acknowledged meanwhile, or another server escalated it
            if not rules:
                continue  # no escalation for this site: marked, so it is not scanned again
            self.stats.escalated += 1
            for rule in due:
                out += self._send(row, "escalation", rule.escalate_email, rule.escalate_webhook, now)
        return out

    # -- messages -----------------------------------------------------------------------------
    def _local(self, ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, zone_for(self.zone)).strftime(f"%Y-%m-%d %H:%M:%S {self.zone}")

    def body(self, row: Row, kind: Kind, now: float | None = None) -> dict[str, Any]:
        """The webhook's JSON (and the e-mail's facts)."""
        what = ALERT_LABELS.get(row["type"], row["type"])
        where = " / ".join(x for x in (row.get("site"), row.get("building"), row.get("elevator")) if x)
        waited = "" if now is None else f" — unacknowledged for {int((now - float(row['received_at'])) // 60)} min"
        title = f"{'ESCALATED: ' if kind == 'escalation' else ''}{what}: {where or row['unit_id']}{waited}"
        link = f"{self.public_url}/units/{row['unit_id']}" if self.public_url else None
        return {"kind": kind, "title": title, "event_id": row["event_id"], "unit_id": row["unit_id"],
                "type": row["type"], "site": row.get("site"), "building": row.get("building"),
                "elevator": row.get("elevator"), "ts": row["ts"], "time": self._local(float(row["ts"])),
                "cls": row.get("cls"), "confidence": row.get("confidence"), "url": link}

    def _email(self, facts: dict[str, Any], to: Sequence[str]) -> EmailMessage:
        assert self.config.smtp is not None
        message = EmailMessage()
        message["From"] = self.config.smtp.sender
        message["To"] = ", ".join(to)
        # Unit-supplied names go into a header: strip line breaks (header injection) and bound the length.
        message["Subject"] = " ".join(f"LiftGuard: {facts['title']}".split())[:200]
        lines = [facts["title"], "", f"Time: {facts['time']}", f"Unit: {facts['unit_id']}"]
        for label, key in (("Site", "site"), ("Building", "building"), ("Elevator", "elevator"), ("Class", "cls")):
            if facts.get(key):
                lines.append(f"{label}: {facts[key]}")
        if facts["url"]:
            lines.append(f"Open: {facts['url']}")
        message.set_content("\n".join(lines) + "\n")
        return message

    def _send(self, row: Row, kind: Kind, emails: Sequence[str], webhook: str | None,
              now: float | None = None) -> list[Delivery]:
        facts = self.body(row, kind, now)
        out = []
        if emails and self.mailer is not None:
            message = self._email(facts, emails)
            mailer = self.mailer
            out.append(self._try(kind, row["event_id"], "email", ", ".join(emails), lambda: mailer(message)))
        if webhook:
            out.append(self._try(kind, row["event_id"], "webhook", webhook, lambda: self.poster(webhook, facts)))
        return out

    def _try(self, kind: Kind, event_id: str, channel: Literal["email", "webhook"], target: str,
             attempt: Callable[[], None]) -> Delivery:
        error = ""
        for n in range(self.config.retries + 1):
            if n and self._stop.wait(self.retry_wait_s * n):
                break  # shutting down
            try:
                attempt()
            except (OSError, smtplib.SMTPException, httpx.HTTPError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            delivery = Delivery(kind, event_id, channel, target, ok=True)
            self.stats.record(delivery)
            return delivery
        log.warning("%s %s for %s to %s failed: %s", kind, channel, event_id, target, error)
        delivery = Delivery(kind, event_id, channel, target, ok=False, error=error)
        self.stats.record(delivery)
        return delivery
