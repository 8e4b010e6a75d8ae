"""`liftguard-fleet models …` and `liftguard-fleet dataset …` (issue 17; docs/IMPROVING_THE_MODEL.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Settings = Callable[[argparse.Namespace], Any]


def _store(args: argparse.Namespace, settings: Settings) -> Any:
    from fleet.store import Store

    s = settings(args)
    store = Store.open(s.db, s.tz)
    store.migrate()
    return store


def cmd_models_add(args: argparse.Namespace, settings: Settings) -> int:
    from fleet.models_registry import add_model

    store = _store(args, settings)
    try:
        checked, added = add_model(store, Path(args.file), added_by=args.by)
    finally:
        store.close()
    m = checked.meta
    print(f"{m.model_id}: {'added' if added else 'already registered'} (sha256 {checked.sha256}, "
          f"{checked.size} bytes, classes {', '.join(m.classes)}, input {m.input_w}x{m.input_h})")
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(args, settings)
    try:
        rows = store.list_models()
        units = store.unit_models() if args.units else []
        agreement = store.shadow_agreement() if args.units else []
    finally:
        store.close()
    if args.json:
        print(json.dumps({"models": rows, "units": units, "shadow_agreement": agreement}, default=str))
        return 0
    print(f"{'model':32} {'version':10} {'sha256':14} {'MB':>6} {'active':>6} {'shadow':>6}  added")
    for r in rows:
        added = dt.datetime.fromtimestamp(r["added_at"], dt.UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{r['model_id'][:32]:32} {(r['version'] or '')[:10]:10} {r['sha256'][:12]:14} "
              f"{r['size_bytes'] / 1e6:6.1f} {r['active_units']:>6} {r['shadow_units']:>6}  {added}")
    for u in units:
        print(f"  {u['unit_id']}: active {u['active'] or '-'}, shadow {u['shadow'] or '-'}"
              f"{'; last rollout ' + u['last_rollout'] if u.get('last_rollout') else ''}")
    for a in agreement:
        print(f"  {a['unit_id']} shadow {a['model_id']}: would hold {a['would_hold']}x, active agreed {a['agreed']}x; "
              f"near confirmed alerts {a['on_confirmed']}, near false alarms {a['on_false_alarm']}")
    return 0


def cmd_models_rollout(args: argparse.Namespace, settings: Settings) -> int:
    from fleet.models_registry import rollout

    s = settings(args)
    store = _store(args, settings)
    try:
        units = store.units_for(site=args.site, units=args.units)
        result = rollout(store, s, args.model, units, args.stage, wait_s=args.wait_s)
    finally:
        store.close()
    for u in result.units.values():
        print(f"{u.unit_id}: {u.state}  {u.detail}")
    ok = sum(1 for u in result.units.values() if u.state == "ok")
    print(f"rollout {result.rollout_id}: {args.model} as {args.stage} on {ok}/{len(result.units)} units")
    return 0 if ok == len(result.units) else 1


def cmd_dataset_export(args: argparse.Namespace, settings: Settings) -> int:
    from fleet.dataset import export_dataset, parse_since

    since = parse_since(args.since)
    store = _store(args, settings)
    try:
        result = export_dataset(store, Path(args.out), since=since, site=args.site)
    finally:
        store.close()
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in result.skipped.items()) or "none"
    print(f"{result.written} labelled images in {result.out} ({json.dumps(result.by_verdict)}); skipped: {skipped}")
    print(f"score a model: liftguard eval --model M --images {result.out / 'images'} "
          f"--truth {result.out / 'truth.csv'} --out REPORT")
    corpus_skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in result.corpus_skipped.items()) or "none"
    print(f"YOLO corpus: {result.corpus_images} decision frames with {result.corpus_boxes} boxes in "
          f"{result.out / 'corpus'}; skipped: {corpus_skipped}")
    return 0


def add_parsers(sub: Any, server_flags: Callable[[argparse.ArgumentParser], None], settings: Settings) -> None:
    models = sub.add_parser("models", help="model registry and staged rollout (add | list | rollout)",
                            description="The model registry: register ONNX models (checked as the device "
                                        "checks them), list them, and roll one out to units in shadow or "
                                        "as active. See docs/IMPROVING_THE_MODEL.md.")
    msub = models.add_subparsers(dest="models_command", required=True)
    add = msub.add_parser("add", help="register an ONNX model (refused if a unit would refuse it)")
    server_flags(add)
    add.add_argument("file", help="the .onnx file (LiftGuard model format, docs/MODEL_FORMAT.md)")
    add.add_argument("--by", default=None, help="who adds it (recorded)")
    add.set_defaults(func=lambda a: cmd_models_add(a, settings))
    lst = msub.add_parser("list", help="registered models and how many units run each")
    server_flags(lst)
    lst.add_argument("--units", action="store_true", help="also each unit's active and shadow model")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=lambda a: cmd_models_list(a, settings))
    ro = msub.add_parser("rollout", help="send a model to units as shadow or active (stage off: stop the shadow)")
    server_flags(ro)
    ro.add_argument("model", help="registered model id")
    target = ro.add_mutually_exclusive_group(required=True)
    target.add_argument("--site", help="every unit that reported this site")
    target.add_argument("--units", nargs="+", metavar="UNIT", help="these units")
    ro.add_argument("--stage", choices=("shadow", "active", "off"), required=True,
                    help="shadow: runs beside the active model, never acts; active: replaces it (the previous "
                         "one is kept for rollback); off: stop the shadow model")
    ro.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the units' answers")
    ro.add_argument("--mqtt", dest="mqtt_url", help="broker URL, mqtt://host:port or mqtts://")
    ro.add_argument("--mqtt-username")
    ro.add_argument("--mqtt-password-file")
    ro.add_argument("--mqtt-ca")
    ro.add_argument("--mqtt-cert")
    ro.add_argument("--mqtt-key")
    ro.add_argument("--client-id")
    ro.set_defaults(func=lambda a: cmd_models_rollout(a, settings))

    dataset = sub.add_parser("dataset", help="labelled data from the managers' verdicts (export)")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    export = dsub.add_parser(
        "export", help="verdicts as labels: images, truth.csv and a manifest that `liftguard eval --truth` reads, "
                       "and a YOLO corpus for tools.train",
        description="Writes DIR/images/*.jpg, DIR/truth.csv (image,expected: confirmed = block, false_alarm = "
                    "allow), DIR/manifest.csv (unit, site, time, verdict, deciding model) and DIR/manifest.json. "
                    "Score a model on it: liftguard eval --model M --images DIR/images --truth DIR/truth.csv "
                    "--out REPORT. Alerts with a clip also go to DIR/corpus/ (images/{train,val}, labels/{train,val} "
                    "in YOLO format, data.yaml, manifest.csv: the tools/corpus.py layout): the decision frame with "
                    "the unit's boxes and the managers' per-object corrections.")
    server_flags(export)
    export.add_argument("--out", required=True, help="output folder (created)")
    export.add_argument("--since", help="only alerts from then on: 2026-11-01, 2026-11-01T08:00+08:00 or epoch s")
    export.add_argument("--site", help="only this site's units")
    export.set_defaults(func=lambda a: cmd_dataset_export(a, settings))
