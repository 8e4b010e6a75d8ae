"""The dashboard's Models page (issue 17 item 3): models per unit (from heartbeats), each rollout's progress,
and what each shadow model would have done, per unit and per model."""

from __future__ import annotations

import re
import time
from typing import Any

from contract import samples
from fleet.store import IngestBatch
from tests.fleet.conftest import FakeUnit, RunningFleet, wait_until


def cells(html: str, row_class: str, key: str) -> list[str]:
    """The text of each cell of the row with class `row_class` whose data attribute is `key`."""
    row = re.search(rf'<tr class="{row_class}"[^>]*{re.escape(key)}[^>]*>(.*?)</tr>', html, re.S)
    assert row, f"no {row_class} row for {key}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]


def test_models_page_shows_models_per_unit_rollout_progress_and_shadow_agreement(
        fleet: RunningFleet, make_unit: Any) -> None:
    lift1: FakeUnit = make_unit("lift-1")
    lift2: FakeUnit = make_unit("lift-2")
    lift1.heartbeat(model_id="active-1", shadow_model_id="cand-2", shadow_runs=40, shadow_skipped_budget=113)
    lift2.heartbeat(model_id="active-1")
    wait_until(lambda: (fleet.store.get_unit("lift-1") or {}).get("shadow_runs") == 40, 30)
    wait_until(lambda: (fleet.store.get_unit("lift-2") or {}).get("model_id") == "active-1", 30)
    store = fleet.store
    store.execute("INSERT INTO models (model_id, sha256, size_bytes, version, classes, metadata, added_at, data) "
                  "VALUES ('cand-2', ?, 3, '0.7', '[]', '{}', ?, ?)", ("ab" * 32, time.time(), b"abc"))
    for unit, state in (("lift-1", "ok"), ("lift-2", "receiving")):
        store.record_rollout("r-1", "cand-2", unit, "shadow", state)
    store.record_rollout("r-0", "cand-2", "lift-2", "shadow", "failed", "rolled back")

    now = time.time()
    batch = IngestBatch()
    confirmed = [samples.alert("lift-1", ts=now - 300), samples.alert("lift-1", ts=now - 100)]
    false_alarm = samples.alert("lift-1", ts=now - 200)

    def shadow(ts: float, agrees: bool) -> None:
        e = samples.alert("lift-1", ts=ts, type="shadow_decision", model_id="cand-2", would="hold", agrees=agrees)
        batch.events.append((e, now, e.model_dump_json(exclude_none=True)))

    for e in (*confirmed, false_alarm):
        batch.events.append((e, now, e.model_dump_json(exclude_none=True)))
    shadow(now - 299, True)  # blocked the first confirmed e-bike too
    shadow(now - 198, True)  # and held on the false alarm; nothing near the second confirmed one: missed
    shadow(now - 50, False)
    store.write_batch(batch)
    store.set_label(confirmed[0].event_id, "confirmed", "m")
    store.set_label(confirmed[1].event_id, "confirmed", "m")
    store.set_label(false_alarm.event_id, "false_alarm", "m")

    client, _ = fleet.login()
    page = client.get("/models")
    assert page.status_code == 200
    html = page.text
    assert '<a href="/models">Models</a>' in html
    assert cells(html, "unit-model-row", 'data-unit-id="lift-1"')[2:5] == ["active-1", "cand-2", "40 / 113"]
    assert cells(html, "unit-model-row", 'data-unit-id="lift-2"')[2:4] == ["active-1", ""]
    r1 = cells(html, "rollout-row", 'data-rollout-id="r-1"')
    assert r1[1:5] == ["cand-2", "shadow", "1/2 answered", "1"] and r1[6] == "1"  # ok 1, receiving 1
    assert cells(html, "rollout-row", 'data-rollout-id="r-0"')[3:6] == ["1/1 answered", "0", "1"]
    per_unit = cells(html, "agreement-unit-row", 'data-unit-id="lift-1"')
    per_model = cells(html, "agreement-model-row", 'data-model-id="cand-2"')
    # would-be holds, agreed with the active relay, would have blocked confirmed, held on false alarms, missed
    assert per_unit[2:] == ["3", "2", "1", "1", "1"]
    assert per_model[1:] == ["1", "3", "2", "1", "1", "1"]
