"""Sessions: assemble the device from a config and drive it (demo/replay on clip time, or live)."""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from gpiozero import Factory

from contract.errors import CameraError, LiftGuardError
from edge.act.base import Actuators, FireCallback
from edge.act.gpio import GpioActuators
from edge.act.pins import make_pin_factory
from edge.act.unwired import LogActuators
from edge.config import Config, load_config, parse_config
from edge.decide.detect import Detector, OnnxDetector
from edge.decide.policy import WallClock, same_time
from edge.decide.shadow import ShadowRunner, load_shadow_detector, shadow_path
from edge.report.clip_upload import ClipUploader
from edge.report.clips import ClipRecorder
from edge.report.events import EventSink, FanOut, JsonlSink, MemorySink
from edge.report.health import Health
from edge.report.model_update import ModelUpdater
from edge.run.app import ClipClock, HoldSupervisor, Pipeline, clip_frames, install_exit_guards, replay
from edge.run.models import PipelineModels, startup_detector, startup_shadow_path
from edge.see.capture import Camera, CameraState, CvReader, FolderReader, Frame, RawReader, source_fps

log = logging.getLogger(__name__)

# The demo's own wiring: relay on GPIO17, a GPIO voice module on GPIO22, fire input on GPIO27.
DEMO_CONFIG: dict[str, Any] = {
    "unit": {"id": "demo-unit", "site": "Demo Estate", "building": "Block A", "elevator": "Car 1"},
    "actuators": {"backend": "gpio", "relay_pin": "GPIO17", "fire_pin": "GPIO27", "fire_active_high": True,
                  "voice": {"mode": "gpio", "pin": "GPIO22"}},
    "events": {"jsonl_path": "", "snapshot_dir": ""},
}


@dataclass
class DemoOptions:
    clip: Path
    events_out: Path | None
    snapshot_out: Path | None
    model: str | None
    mqtt_url: str | None
    config_path: str | None
    fps: float | None = None
    title: str = "demo"
    require_block: bool = True
    shadow_model: str | None = None  # a candidate run beside the model, every models.shadow_every frames
    pin_factory: Factory | None = None  # default: a fresh MockFactory


def build_detector(cfg: Config, override: str | None = None) -> OnnxDetector:
    d = cfg.detector
    return OnnxDetector(override or d.model_path or None, threads=d.threads, min_score=d.min_score,
                        nms_iou=d.nms_iou)


def open_recording(path: Path, loop: bool = False) -> tuple[RawReader, float | None]:
    if path.is_dir():
        return FolderReader(path), None
    if not path.is_file():
        raise CameraError(f"recording not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CameraError(f"cannot read video {path}")
    reader = CvReader(cap, finite=not loop)
    return reader, source_fps(reader, 0.0) or None


def run_demo(opts: DemoOptions) -> int:
    """Demo and replay: a recording through the whole device on clip time, with gpiozero mock pins."""
    from gpiozero.pins.mock import MockFactory

    # handed to the actuators only: gpiozero's global default is left as it was
    pins = opts.pin_factory if opts.pin_factory is not None else MockFactory()
    cfg = load_config(opts.config_path) if opts.config_path else parse_config(DEMO_CONFIG)
    reader, native_fps = open_recording(opts.clip)
    detector = build_detector(cfg, opts.model)
    fps = opts.fps or native_fps or cfg.camera.fps
    memory = MemorySink()
    sinks: list[EventSink] = [memory]
    if opts.events_out:
        opts.events_out.parent.mkdir(parents=True, exist_ok=True)
        opts.events_out.write_text("")  # one run per file: the log shows exactly this run
        sinks.append(JsonlSink(opts.events_out))
    clock = ClipClock()
    fan_out = FanOut(sinks)
    # Decisions run on clip time throughout (the outcome cannot depend on host load). Events carry clip time in
    # the local log, but wall-clock time when they go to a fleet, which files them by date and refuses 1970.
    start = time.time() if opts.mqtt_url else 0.0
    pipeline = Pipeline(cfg, detector, build_actuators(cfg, pin_factory=pins), fan_out, timeline=print, clock=clock,
                        t0=0.0, wall=lambda t: start + t)
    pipeline.policy.step_s = 1.0 / fps  # the clip's frame period, not the live camera's
    clips = start_clips(cfg, pipeline)  # clips.enabled in the --config: clips of the recording's holds
    shadow_file = opts.shadow_model or (str(shadow_path(cfg.models) or "") if opts.config_path else "")
    if shadow_file:  # offline: no frame budget to protect, so every n-th frame is seen
        pipeline.shadow = ShadowRunner(load_shadow_detector(shadow_file, cfg), cfg, budget_ms=None, step_s=1.0 / fps,
                                       wall=pipeline.wall)
    link = None
    if opts.mqtt_url:
        outbox = (opts.events_out.parent if opts.events_out else Path(tempfile.gettempdir())) / "demo-outbox.sqlite3"
        mqtt_cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(
            update={"url": opts.mqtt_url, "outbox_path": str(outbox)})})
        link = _start_link(mqtt_cfg, pipeline, fan_out, lambda: "online")
    print(f"LiftGuard {opts.title}: {opts.clip.name} at {fps:g} fps, model {detector.metadata.model_id}, "
          f"unit {cfg.unit.id} (mock pins: relay {cfg.actuators.relay_pin})")
    wall0 = time.perf_counter()
    try:
        frames = replay(pipeline, clip_frames(reader, fps), fps, clock)
    finally:
        reader.close()
        pipeline.close()
        if clips is not None:
            clips.flush()
            clips.close()
        if link is not None:
            link.close()
    wall = time.perf_counter() - wall0
    pipeline_ms = pipeline.metrics.window("pipeline_ms")
    per_frame = statistics.median(pipeline_ms) if pipeline_ms else 0.0
    blocks = [e for e in memory.events if e.type == "ebike_blocked" and e.phase == "start"]
    print(f"{frames} frames ({frames / fps:.1f} s of clip) in {wall:.1f} s; median {per_frame:.1f} ms per frame "
          f"(detect+track+decide); {len(memory.events)} events")
    if pipeline.shadow is not None:
        st = pipeline.shadow.stats
        print(f"shadow {pipeline.shadow.model_id}: ran on {st.runs} frames (every {pipeline.shadow.every}), "
              f"median {statistics.median(st.ms) if st.ms else 0.0:.1f} ms each; {st.events} shadow_decision events, "
              f"{st.errors} errors; it never touched the relay or voice")
    if opts.events_out:
        print(f"events: {opts.events_out}")
    if opts.snapshot_out and memory.snapshots:
        first = blocks[0].event_id if blocks and blocks[0].event_id in memory.snapshots else next(
            iter(memory.snapshots))
        image = cv2.imdecode(np.frombuffer(memory.snapshots[first], np.uint8), cv2.IMREAD_COLOR)
        opts.snapshot_out.parent.mkdir(parents=True, exist_ok=True)
        if image is not None:
            cv2.imwrite(str(opts.snapshot_out), image)
        print(f"snapshot: {opts.snapshot_out}")
    if opts.require_block and not blocks:
        print("no e-bike was blocked in this clip")
        return 3
    return 0


def build_actuators(cfg: Config, on_fire: FireCallback | None = None, pin_factory: Factory | None = None) -> Actuators:
    """The configured backend; `pin_factory` (gpiozero) for the gpio backend, None = gpiozero's default."""
    a = cfg.actuators
    if a.backend == "gpio":
        factory = pin_factory if pin_factory is not None else make_pin_factory(a.pin_factory)
        return GpioActuators(a, on_fire=on_fire, pin_factory=factory)
    if a.backend == "bridge":
        from firmware_bridge.host import BridgeActuators

        bridge: Actuators = BridgeActuators.from_config(a, on_fire=on_fire)
        return bridge
    return LogActuators()


def _start_link(cfg: Config, pipeline: Pipeline, fan_out: FanOut, camera_state: Callable[[], str]) -> Any:
    """The MQTT link as one more event sink, answering fleet commands through the pipeline; rejected
    commands and configs are counted in the pipeline's metrics (in the service: the health's)."""
    from edge.report.link import MqttLink

    # Snapshots are anonymised by the pipeline, where they are drawn; the link carries them as they are.
    link = MqttLink.from_config(cfg, pipeline, lambda: pipeline.heartbeat(
        camera_state(), outbox_depth=link.outbox.depth(), outbox_evicted=link.outbox.evicted()), pipeline.metrics)
    fan_out.sinks.append(link)
    pipeline.on_relay_change = link.set_relay_state
    link.start()
    return link


def start_shadow(cfg: Config, wall: WallClock = same_time) -> ShadowRunner | None:
    """The configured shadow model, or None. A candidate that fails to load is logged and left out:
    it must never keep the unit (and its active model) from starting."""
    path = shadow_path(cfg.models)
    if path is None:
        return None
    try:
        detector = load_shadow_detector(path, cfg)
    except LiftGuardError as exc:
        log.error("shadow model not started: %s", exc)
        return None
    log.info("shadow model %s runs on every %d-th frame", detector.metadata.model_id, cfg.models.shadow_every)
    return ShadowRunner(detector, cfg, budget_ms=cfg.detector.budget_ms, wall=wall)


def start_models(cfg: Config, pipeline: Pipeline) -> ModelUpdater:
    """Model rollout for a running pipeline (attach it to the link); a shadow model rolled out
    earlier (models.dir/state.json) is started again when the config names none."""
    updater = ModelUpdater(cfg.models.dir, PipelineModels(pipeline))
    rolled_out_shadow = startup_shadow_path(cfg)
    if rolled_out_shadow is not None:
        updater.install("shadow", rolled_out_shadow)
    return updater


def start_clips(cfg: Config, pipeline: Pipeline) -> ClipRecorder | None:
    """Event clips (clips.enabled): fed after each frame's decision, written on their own thread."""
    if not cfg.clips.enabled:
        return None
    recorder = ClipRecorder(cfg.clips, cfg.unit.id, cfg.policy.block_classes, pipeline.policy.threshold)
    pipeline.frame_listeners.append(lambda frame, detections, decision: recorder.observe(
        frame.ts, frame.image, detections, decision.events, pipeline.policy.holding))
    return recorder


def attach_clip_upload(cfg: Config, link: Any, recorder: ClipRecorder | None = None) -> ClipUploader | None:
    """Clips of holds to the fleet (clips.enabled and clips.upload), on the link's worker thread; the
    recorder's dropped and evicted clips go into the heartbeat's `clips_lost`."""
    if not (cfg.clips.enabled and cfg.clips.upload):
        return None
    uploader = ClipUploader(cfg.clips.dir, cfg.clips.upload_interval_s)
    losses = None
    if recorder is not None:
        counts = recorder.counts
        losses = lambda: counts["dropped_busy"] + counts["evicted"] + counts["write_errors"]  # noqa: E731
    link.attach_clips(uploader, losses)
    return uploader


def run_service(cfg: Config, stop: threading.Event, detector: Detector | None = None,
                camera: Camera | None = None, health: Health | None = None,
                supervisor_stall_s: float = 0.8) -> int:
    """The appliance: live camera, real pins (gpiozero's default factory), until SIGTERM/SIGINT
    (or the end of a file source). Parts may be passed in (tests); by default built from `cfg`.

    Decisions run on time.monotonic (events carry wall time). READY=1 goes out once model and pins are
    up, with a degraded STATUS while the camera is not (systemd must not restart a unit whose camera
    is merely unplugged). `HoldSupervisor` releases a hold within 1 s of the last processed frame."""
    health = health or Health()
    rollback_note = None
    if detector is None:
        # The rolled-out model (models.dir/state.json), else the one before it, else the configured one,
        # each loaded and self-checked: a corrupt or constant model is refused before anything starts.
        detector, rollback_note = startup_detector(cfg)
    camera = camera or Camera(cfg.camera)
    pipeline: Pipeline | None = None

    def on_fire(active: bool) -> None:  # the input's edge, straight into the policy
        if pipeline is not None:
            pipeline.on_fire(active)

    actuators = build_actuators(cfg, on_fire)
    sinks: list[EventSink] = []
    if cfg.events.jsonl_path:
        sinks.append(JsonlSink(cfg.events.jsonl_path, cfg.events.snapshot_dir or None))
    fan_out = FanOut(sinks)
    pipeline = Pipeline(cfg, detector, actuators, fan_out, timeline=lambda line: log.info("%s", line.strip()),
                        metrics=health.metrics)  # one registry: heartbeat, status line and link count there
    pipeline.relay_listeners.append(health.set_door)
    pipeline.progress_listeners.append(health.frame_processed)
    heartbeat = getattr(actuators, "progress", None)  # the I/O board: heartbeats only from frame progress
    if callable(heartbeat):
        pipeline.progress_listeners.append(heartbeat)

    def update_camera(new: Config) -> None:
        camera.reconfigure(new.camera)
        pipeline.policy.step_s = 1.0 / new.camera.fps

    pipeline.updaters["camera"] = update_camera
    pipeline.shadow = start_shadow(cfg, pipeline.wall)
    updater = start_models(cfg, pipeline)
    clips = start_clips(cfg, pipeline)
    install_exit_guards(pipeline, stop)
    supervisor = HoldSupervisor(pipeline, stall_after_s=supervisor_stall_s)
    link = _start_link(cfg, pipeline, fan_out, lambda: camera.state.value) if cfg.mqtt.url else None
    if link is not None:
        link.attach_models(updater)
        attach_clip_upload(cfg, link, clips)
        updater.announce(rollback_note is None, rollback_note or "started")  # model/reported: what runs now
    last = 0.0
    try:
        health.start()
        health.component_up("model")
        health.component_up("pins")
        camera.open()
        health.set_camera(camera.state.value)
        health.component_up("camera")  # READY even with the camera offline: STATUS says so, we keep retrying
        supervisor.start()
        while not stop.is_set() and not camera.ended:
            frame = camera.read()
            now = time.monotonic()
            health.set_camera(camera.state.value)
            if frame is None:
                if not camera.ended:  # a recording that ran out is not a camera fault
                    # No new frame yet is not a fault by itself: the camera's state says (offline after
                    # read_timeout_s), and the hold supervisor releases a hold 0.8 s after the last frame.
                    pipeline.tick(now, camera_ok=camera.state in (CameraState.ONLINE, CameraState.STARTING))
                    health.loop_ticked()
                continue
            min_interval = 1.0 / camera.cfg.fps
            if camera.live and now - last < min_interval:
                continue  # camera faster than the configured rate: drop, keep latency low
            if not camera.live and now - last < min_interval:
                stop.wait(min_interval - (now - last))  # a recording as `run`'s camera plays at camera.fps
                frame = Frame(frame.index, time.monotonic(), frame.image, frame.repeat)
            last = time.monotonic()
            pipeline.process(frame, camera_ok=camera.ok)
    finally:
        supervisor.stop()
        pipeline.close()
        if clips is not None:
            clips.close()
        camera.close()
        if link is not None:
            link.close()
        health.stop()
    return 0
