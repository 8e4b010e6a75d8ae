"""What the fleet calls an alert and what a person can say about one — defined once for the store's
queries, the API's validation, the pages' filters and the dashboard script (which reads them from the page)."""

from __future__ import annotations

from typing import Literal, get_args

# Alerts are the `start` of an incident that a person should look at.
AlertType = Literal["ebike_blocked", "blocking_disabled", "camera_fault"]
ALERT_TYPES: tuple[AlertType, ...] = get_args(AlertType)
# How pages, notifications and e-mails name each alert type.
ALERT_LABELS: dict[AlertType, str] = {"ebike_blocked": "E-bike blocked",
                                      "blocking_disabled": "E-bike seen (blocking disabled)",
                                      "camera_fault": "Camera fault"}
# The alerts that count as an e-bike seen (the daily chart).
EBIKE_TYPES: tuple[AlertType, ...] = ("ebike_blocked", "blocking_disabled")

Verdict = Literal["acknowledged", "false_alarm", "confirmed"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
# Button labels of each verdict on the dashboard.
VERDICT_LABELS: dict[Verdict, str] = {"acknowledged": "Acknowledge", "false_alarm": "False alarm",
                                      "confirmed": "Confirmed"}
# The alert-list filter: open (no verdict yet), all, or one verdict.
AlertStatus = Literal["open", "all", "acknowledged", "false_alarm", "confirmed"]
ALERT_STATUSES: tuple[AlertStatus, ...] = get_args(AlertStatus)
# A per-object correction on an alert's clip: a training class (contract.model_format.TRAINING_CLASSES, the
# YOLO label order) or "none" (not an object). fleet/store/clips.py OBJECT_CLASSES is the same list.
ObjectClass = Literal["ebike", "bicycle", "wheelchair", "stroller", "person", "cart", "none"]
