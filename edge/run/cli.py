"""`liftguard` command line: run | demo | replay | eval | config | provision | selftest."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from contract.errors import LiftGuardError
from edge import __version__

log = logging.getLogger("liftguard")

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_CLIP = ASSETS / "demo_clip.mp4"


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_config(args: argparse.Namespace) -> int:
    from edge.config import DEFAULT_HEADER, Config, commented_defaults, load_config

    if args.action == "schema":
        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    if args.action == "default":
        print(DEFAULT_HEADER + commented_defaults())
        return 0
    cfg = load_config(args.file)
    print(f"{args.file}: OK (unit {cfg.unit.id})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.run.session import DemoOptions, run_demo

    return run_demo(DemoOptions(clip=Path(args.clip), events_out=Path(args.events_out),
                                snapshot_out=Path(args.snapshot_out), model=args.model, mqtt_url=args.mqtt,
                                config_path=args.config))


def cmd_replay(args: argparse.Namespace) -> int:
    from edge.run.session import DemoOptions, run_demo

    return run_demo(DemoOptions(clip=Path(args.source), events_out=Path(args.events_out) if args.events_out else None,
                                snapshot_out=Path(args.snapshot_out) if args.snapshot_out else None,
                                model=args.model, mqtt_url=None, config_path=args.config, fps=args.fps,
                                title="replay", require_block=False, shadow_model=args.shadow_model))


def cmd_run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.run.session import run_service

    return run_service(load_config(args.config), stop=threading.Event())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liftguard", description="Keeps e-bikes out of elevators.")
    parser.add_argument("--version", action="version", version=f"liftguard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the bundled clip through the whole device, with mock pins")
    demo.add_argument("--clip", default=str(DEMO_CLIP), help="video file or folder of frames")
    demo.add_argument("--events-out", default="out/demo-events.jsonl", help="event log (JSON lines)")
    demo.add_argument("--snapshot-out", default="out/demo-snapshot.png", help="annotated snapshot (PNG)")
    demo.add_argument("--model", default=None, help="ONNX model (default: the shipped model)")
    demo.add_argument("--mqtt", default=None, metavar="URL", help="also publish through this broker")
    demo.add_argument("--config", default=None, help="config file (default: built-in demo config)")
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser("replay", help="a recording through the pipeline on clip time, with mock pins")
    rep.add_argument("source", help="video file or folder of frames (name order)")
    rep.add_argument("--fps", type=float, default=None, help="clip frame rate (default: the video's own)")
    rep.add_argument("--config", default=None)
    rep.add_argument("--events-out", default=None)
    rep.add_argument("--snapshot-out", default=None)
    rep.add_argument("--model", default=None)
    rep.add_argument("--shadow-model", default=None, metavar="ONNX",
                     help="also run this candidate in shadow: its would-be decisions become shadow_decision "
                          "events (it never touches the relay or voice)")
    rep.set_defaults(func=cmd_replay)

    run = sub.add_parser("run", help="the service: live camera, real pins")
    run.add_argument("--config", default="/etc/liftguard/config.yaml")
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="config schema | check FILE | default (commented defaults)")
    cfg.add_argument("action", choices=["schema", "check", "default"])
    cfg.add_argument("file", nargs="?", default="/etc/liftguard/config.yaml")
    cfg.set_defaults(func=cmd_config)

    sub.add_parser("eval", help="score a model on images (see `liftguard eval --help`)", add_help=False)
    sub.add_parser("provision", help="set up this unit (see `liftguard provision --help`)", add_help=False)
    sub.add_parser("selftest", help="check camera, model, relay, speaker, broker, clock", add_help=False)
    return parser


# Subcommands owned by other modules take their own arguments.
DELEGATED = {
    "eval": ("tools.evaluate", "main"),
    "provision": ("edge.install.provision", "provision_main"),
    "selftest": ("edge.run.selftest", "selftest_main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            import importlib

            module_name, func_name = DELEGATED[argv[0]]
            setup_logging("-v" in argv)
            func = getattr(importlib.import_module(module_name), func_name)
            return int(func(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        setup_logging(args.verbose)
        started = time.monotonic()
        code = int(args.func(args))
        log.debug("%s finished in %.1f s", args.command, time.monotonic() - started)
        return code
    except LiftGuardError as exc:
        print(f"liftguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
