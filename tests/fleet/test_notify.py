"""Nobody is told (issue 16.7): per-site e-mail (a real SMTP server, aiosmtpd) and webhooks (a real HTTP
server) for each new alert, escalation when one stays unacknowledged N minutes (a clock passed in, no
sleeps), exactly once across two fleet servers — and a stuck mail server or webhook never holds up ingest."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.errors import ConfigError
from fleet.notify import Notifier, NotifyConfig, load_notify_config
from fleet.store import IngestBatch, Store
from tests.fleet.conftest import FakeUnit, start_fleet, wait_until
from tests.fleet.test_store import alert, batch_of, heartbeat
from tests.support.mosquitto import MosquittoBroker, free_port

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


@dataclass
class Inbox:
    """What a real SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@dataclass
class Hook:
    """A webhook receiver: every JSON body POSTed to it, by path."""

    port: int
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def hook() -> Iterator[Hook]:
    received = Hook(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.posts.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", received.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


def rules(smtp_port: int, hook: Hook, **harbour: Any) -> NotifyConfig:
    return NotifyConfig.model_validate({
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "liftguard@fleet.example"},
        "sites": [{"site": "Harbour View", "email": ["desk@harbour.example"], "webhook": hook.url("/harbour"),
                   **harbour},
                  {"site": "Hillside", "webhook": hook.url("/hillside")}],
        "retries": 0})


def seed_units(store: Store) -> None:
    beats = IngestBatch()
    beats.add_heartbeat(heartbeat("lift-h1", site="Harbour View", building="Tower A", elevator="Lift 2"), time.time())
    beats.add_heartbeat(heartbeat("lift-s1", site="Hillside", building="North"), time.time())
    beats.add_heartbeat(heartbeat("lift-x1", site="Elsewhere", building="B"), time.time())
    store.write_batch(beats)


def test_each_new_alert_is_mailed_and_posted_to_its_sites_recipients_once(
        store: Store, smtp: tuple[Inbox, int], hook: Hook) -> None:
    inbox, port = smtp
    seed_units(store)
    harbour, hillside, elsewhere = alert("lift-h1"), alert("lift-s1"), alert("lift-x1")
    hold_ended = alert("lift-h1", phase="end", incident_id=harbour.incident_id)
    store.write_batch(batch_of(harbour, hillside, elsewhere, hold_ended, snapshots=False))
    notifier = Notifier(store, rules(port, hook), timezone="Asia/Shanghai", public_url="https://fleet.example")

    sent = notifier.run_once(time.time())
    assert sorted((d.event_id, d.channel, d.ok) for d in sent) == sorted([
        (harbour.event_id, "email", True), (harbour.event_id, "webhook", True),
        (hillside.event_id, "webhook", True)])  # no rule for "Elsewhere"; an `end` is no alert
    (message,) = inbox.messages
    assert message["To"] == "desk@harbour.example" and message["From"] == "liftguard@fleet.example"
    assert message["Subject"] == "LiftGuard: E-bike blocked: Harbour View / Tower A / Lift 2"
    body = message.get_content()
    assert "Unit: lift-h1" in body and "Open: https://fleet.example/units/lift-h1" in body
    assert "Asia/Shanghai" in body  # the site's time
    posts = dict(hook.posts)
    assert posts["/harbour"]["event_id"] == harbour.event_id and posts["/harbour"]["kind"] == "alert"
    assert posts["/hillside"]["unit_id"] == "lift-s1"

    assert notifier.run_once(time.time()) == []  # told once
    later = alert("lift-s1")
    store.write_batch(batch_of(later, snapshots=False))
    assert [(d.event_id, d.channel) for d in notifier.run_once(time.time())] == [(later.event_id, "webhook")]


def test_an_alert_left_unacknowledged_escalates_once_after_its_sites_minutes(
        store: Store, smtp: tuple[Inbox, int], hook: Hook) -> None:
    inbox, port = smtp
    seed_units(store)
    ignored, answered = alert("lift-h1"), alert("lift-h1")
    store.write_batch(batch_of(ignored, answered, snapshots=False))
    arrived = float(store.get_alert(ignored.event_id)["received_at"])  # type: ignore[index]
    notifier = Notifier(store, rules(port, hook, escalate_after_min=10, escalate_email=["boss@harbour.example"],
                                     escalate_webhook=hook.url("/escalate")))
    notifier.run_once(arrived)  # the first word: 2 e-mails, 2 posts
    inbox.messages.clear()
    hook.posts.clear()

    store.set_label(answered.event_id, "acknowledged", "manny")
    assert notifier.run_once(arrived + 9 * 60) == []  # 9 minutes: not yet
    sent = notifier.run_once(arrived + 10 * 60 + 1)
    assert {(d.kind, d.event_id, d.channel) for d in sent} == {("escalation", ignored.event_id, "email"),
                                                              ("escalation", ignored.event_id, "webhook")}
    (message,) = inbox.messages
    assert message["X-Envelope-To"] == "boss@harbour.example"
    assert message["Subject"].startswith("LiftGuard: ESCALATED: E-bike blocked: Harbour View")
    assert "unacknowledged for 10 min" in message["Subject"]
    assert hook.posts == [("/escalate", hook.posts[0][1])] and hook.posts[0][1]["kind"] == "escalation"
    assert notifier.run_once(arrived + 60 * 60) == []  # escalated once
    assert store.get_alert(ignored.event_id)["escalated_at"] == arrived + 10 * 60 + 1  # type: ignore[index]


def test_two_servers_on_one_database_tell_each_alert_once(store: Store, hook: Hook) -> None:
    seed_units(store)
    config = NotifyConfig.model_validate({"sites": [{"site": "*", "webhook": hook.url("/all")}], "retries": 0})
    store.write_batch(batch_of(*[alert(u) for u in ("lift-h1", "lift-s1", "lift-x1") for _ in range(10)],
                               snapshots=False))
    a, b = Notifier(store, config), Notifier(store, config)
    results: list[int] = []
    threads = [threading.Thread(target=lambda n=n: results.append(len(n.run_once(time.time())))) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 30 and len({p[1]["event_id"] for p in hook.posts}) == 30 == len(hook.posts)


def test_an_alert_first_seen_long_after_it_arrived_is_not_sent(store: Store, hook: Hook) -> None:
    seed_units(store)
    store.write_batch(batch_of(alert("lift-s1"), snapshots=False))
    notifier = Notifier(store, NotifyConfig.model_validate({"sites": [{"site": "*", "webhook": hook.url("/")}]}))
    assert notifier.run_once(time.time() + 2 * 3600) == []  # the server was down for two hours
    assert (notifier.stats.skipped_stale, hook.posts) == (1, [])


def test_a_dead_mail_server_is_a_failed_delivery_not_a_crash(store: Store, hook: Hook) -> None:
    seed_units(store)
    store.write_batch(batch_of(alert("lift-h1"), snapshots=False))
    config = rules(free_port(), hook).model_copy(update={"retries": 1})  # nobody listens on the SMTP port
    notifier = Notifier(store, config, retry_wait_s=0.01)
    sent = notifier.run_once(time.time())
    assert sorted((d.channel, d.ok) for d in sent) == [("email", False), ("webhook", True)]
    assert "ConnectionRefusedError" in next(d.error for d in sent if not d.ok)
    assert (notifier.stats.sent, notifier.stats.failed) == (1, 1)


def test_rules_files_are_validated_with_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "notify.toml"
    path.write_text('[[sites]]\nsite = "Harbour View"\nemail = ["desk@harbour.example"]\n')
    with pytest.raises(ConfigError, match=r"e-mail recipients need an \[smtp\] section"):
        load_notify_config(path)
    path.write_text('[[sites]]\nsite = "Harbour View"\nwebhook = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"sites\.0\.webhook"):
        load_notify_config(path)
    path.write_text('[smtp]\nhost = "mail"\nsender = "lg@x.example"\n[[sites]]\nsite = "*"\nemail = ["a@x.example"]\n'
                    "escalate_after_min = 15\n")
    config = load_notify_config(path)
    assert config.escalation_min() == 15 and config.rules_for("Anywhere")[0].email == ["a@x.example"]


def test_a_stuck_webhook_never_holds_up_ingest(mosquitto: MosquittoBroker, tmp_path: Path,
                                               make_unit: Callable[..., FakeUnit]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}")
    release = threading.Event()
    posted: list[str] = []

    def stuck_poster(url: str, body: dict[str, Any]) -> None:
        posted.append(body["event_id"])
        release.wait(60)  # a webhook that does not answer

    notifier = Notifier(fleet.store, NotifyConfig.model_validate({"sites": [{"site": "*", "webhook": "http://x/"}]}),
                        poster=stuck_poster)
    fleet.ctx.notifier.listeners.append(notifier.wake)
    notifier.start()
    try:
        unit = make_unit("lift-1")
        first = unit.alert(with_snapshot=False)
        wait_until(lambda: posted == [first.event_id], timeout=15)  # the notifier is now stuck on it
        rest = [unit.alert(with_snapshot=False) for _ in range(5)]
        wait_until(lambda: all(fleet.store.get_alert(e.event_id) for e in rest), timeout=15)  # stored regardless
        assert posted == [first.event_id]
        release.set()
        wait_until(lambda: sorted(posted) == sorted([first.event_id, *(e.event_id for e in rest)]), timeout=15)
    finally:
        release.set()
        notifier.stop()
        fleet.stop()


def test_serve_sends_the_rules_files_webhooks_for_alerts_from_the_broker(
        mosquitto: MosquittoBroker, tmp_path: Path, hook: Hook, make_unit: Callable[..., FakeUnit]) -> None:
    rules_file = tmp_path / "notify.toml"
    rules_file.write_text(f'[[sites]]\nsite = "Harbour View"\nwebhook = "{hook.url("/desk")}"\n')
    port = free_port()
    env = {**os.environ, "LIFTGUARD_FLEET_DB": f"sqlite:///{tmp_path / 'f.db'}",
           "LIFTGUARD_FLEET_MQTT_URL": mosquitto.url, "LIFTGUARD_FLEET_HTTP_PORT": str(port)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "serve", "--notify-file", str(rules_file),
                             "--public-url", "https://fleet.example"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _healthy(port), timeout=60)  # generous: a loaded machine starts a process slowly
        event = make_unit("lift-9").alert(with_snapshot=False)
        wait_until(lambda: hook.posts, timeout=60)
        ((path, body),) = hook.posts
        assert (path, body["event_id"], body["url"]) == ("/desk", event.event_id, "https://fleet.example/units/lift-9")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
