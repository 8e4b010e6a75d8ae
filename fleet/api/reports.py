"""Statistics, the labelled-dataset export and the ingest metrics."""

from __future__ import annotations

import csv
import datetime as dt
import io
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from fleet.api.context import Ctx, User
from fleet.store import Store

router = APIRouter()


@router.get("/api/stats/daily")
def daily(ctx: Ctx, who: User, days: Annotated[int, Query(ge=1, le=366)] = 14,
          top: Annotated[int, Query(ge=1, le=50)] = 8) -> dict[str, Any]:
    """E-bike alerts per site and building and day, oldest day first; days are those of the `timezone`
    setting (the site's), so the last one is today there. Two sites' buildings of the same name are two
    series; `label` is "site / building"."""
    tz = ctx.settings.tz
    today = dt.datetime.fromtimestamp(ctx.clock(), tz).date()
    day_list = [(today - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    series: dict[tuple[str, str], list[int]] = {}
    for row in ctx.store.daily_counts(day_list[0], day_list[-1]):
        series.setdefault((row["site"], row["building"]), [0] * days)[day_list.index(row["day"])] = int(row["n"])
    # A chart with a thousand buildings says nothing: keep the busiest, sum the rest.
    ranked = sorted(series, key=lambda key: (-sum(series[key]), key))
    shown = sorted(ranked[:top])
    out: list[dict[str, Any]] = [{"site": site, "building": building, "label": f"{site} / {building}",
                                  "counts": series[(site, building)]} for site, building in shown]
    if len(ranked) > top:
        rest = [sum(series[key][i] for key in ranked[top:]) for i in range(days)]
        out.append({"site": None, "building": None, "label": f"{len(ranked) - top} other buildings", "counts": rest})
    return {"days": day_list, "timezone": ctx.settings.timezone, "series": out}


@router.get("/api/export/dataset.zip", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def export_dataset(ctx: Ctx, who: User) -> StreamingResponse:
    """Labelled alerts for retraining: labels.csv + snapshots/{event_id}.jpg (admins)."""
    who.require("admin")
    # Closed by chunks() once streamed; a `with` here would close it before the response is sent.
    spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115
    write_dataset_zip(ctx.store, spool)
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while block := spool.read(256 * 1024):
                yield block

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(chunks(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="liftguard-labels-{stamp}.zip"'})


@router.get("/api/metrics")
def metrics(ctx: Ctx, who: User) -> dict[str, Any]:
    ingest = ctx.ingestor.stats.snapshot() if ctx.ingestor else {}
    return {"ingest": ingest, "mqtt_connected": bool(ctx.ingestor and ctx.ingestor.connected.is_set()),
            "events_stored": ctx.store.count_events()}


def write_dataset_zip(store: Store, target: Any) -> int:
    """Write labels.csv + snapshots into a zip file object; returns the number of labelled alerts."""
    rows = store.labelled_dataset()
    labels = io.StringIO()
    writer = csv.writer(labels)
    writer.writerow(["event_id", "unit_id", "site", "building", "type", "ts", "cls", "confidence",
                     "verdict", "labelled_by", "labelled_at", "snapshot"])
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for row in rows:
            snapshot = f"snapshots/{row['event_id']}.jpg" if row["data"] is not None else ""
            if snapshot:
                # JPEG is already compressed: store, don't deflate.
                zf.writestr(snapshot, bytes(row["data"]), compress_type=zipfile.ZIP_STORED)
            writer.writerow([row["event_id"], row["unit_id"], row["site"] or "", row["building"] or "", row["type"],
                             row["ts"], row["cls"] or "", row["confidence"] if row["confidence"] is not None else "",
                             row["verdict"], row["labelled_by"], row["labelled_at"], snapshot])
        zf.writestr("labels.csv", labels.getvalue())
    return len(rows)
