"""Source groups: near-duplicate images share a group, and a group never straddles train and val.

Roboflow exports name files ``<original>_jpg.rf.<hash>.jpg``; augmented or grayscale copies of one
photo keep ``<original>``, so the original stem is the group. Screenshot series (etoiles) are taken
seconds apart from one CCTV recording, so a burst of timestamps is one group.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

_RF_SUFFIX = re.compile(r"_(jpg|jpeg|png)\.rf\.[0-9a-f]+$", re.IGNORECASE)
# Copies made by the original uploaders: "name_grayscale", "name-1-", "name (2)".
_COPY_SUFFIX = re.compile(r"(_grayscale|-\d+-|\s*\(\d+\))+$", re.IGNORECASE)
_SNIPASTE = re.compile(r"Snipaste_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})")
# Screenshots closer together than this are treated as the same scene.
BURST_GAP_S = 60.0


def stem_group(stem: str) -> str:
    """The original photo name behind a (possibly augmented, re-exported) file stem."""
    base = _RF_SUFFIX.sub("", stem)
    return _COPY_SUFFIX.sub("", base)


def burst_groups(stems: Iterable[str], gap_s: float = BURST_GAP_S) -> dict[str, str]:
    """Map each timestamped screenshot stem to the first stem of its burst; others map to themselves."""
    stamped: list[tuple[datetime, str]] = []
    groups: dict[str, str] = {}
    for stem in stems:
        m = _SNIPASTE.search(stem)
        if m:
            stamped.append((datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S"), stem))
        else:
            groups[stem] = stem
    stamped.sort()
    current, last = "", None
    for when, stem in stamped:
        if last is None or (when - last).total_seconds() > gap_s:
            current = stem
        groups[stem] = current
        last = when
    return groups


def split_for_group(group: str, val_fraction: float) -> str:
    """Deterministic train/val assignment from a hash of the group (stable across runs and machines)."""
    digest = hashlib.sha256(group.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def grouped_folds(groups: Sequence[str], k: int) -> dict[str, int]:
    """Grouped K-fold: whole groups to folds, largest first into the emptiest fold (balanced, deterministic)."""
    if k < 2:
        raise ValueError("need at least 2 folds")
    sizes: dict[str, int] = defaultdict(int)
    for g in groups:
        sizes[g] += 1
    load = [0] * k
    fold_of: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        fold = min(range(k), key=lambda f: (load[f], f))
        fold_of[g] = fold
        load[fold] += sizes[g]
    return fold_of


# Below this many groups a source is split by exact subset search instead of hashing, so that a tiny
# source (etoiles: 28 images in 5 bursts) still lands some images in val.
_SMALL_SOURCE_GROUPS = 16


def assign_splits(group_sizes: dict[str, int], val_fraction: float) -> dict[str, str]:
    """Split the groups of one source. Large sources: hash per group. Small ones: the subset of
    groups whose image count is closest to ``val_fraction`` of the source (never all of it)."""
    if len(group_sizes) > _SMALL_SOURCE_GROUPS or len(group_sizes) < 2 or val_fraction <= 0:
        return {g: split_for_group(g, val_fraction) for g in group_sizes}
    groups = sorted(group_sizes, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    total = sum(group_sizes.values())
    target = val_fraction * total
    best_mask, best_cost = 0, float("inf")
    for mask in range(1, 2 ** len(groups) - 1):
        size = sum(group_sizes[g] for i, g in enumerate(groups) if mask >> i & 1)
        cost = abs(size - target)
        if cost < best_cost:
            best_mask, best_cost = mask, cost
    return {g: ("val" if best_mask >> i & 1 else "train") for i, g in enumerate(groups)}
