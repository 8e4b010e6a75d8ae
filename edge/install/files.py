"""What provisioning writes: a file change shown as a diff, written atomically (temp file + fsync + rename)."""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FileChange:
    path: Path  # on this machine (with --root applied)
    content: bytes
    mode: int
    secret: bool = False
    binary: bool = False

    def current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def differs(self) -> bool:
        if self.current() != self.content:
            return True
        return (self.path.stat().st_mode & 0o777) != self.mode

    def diff(self) -> str:
        old = self.current()
        if self.secret or self.binary:
            what = "secret" if self.secret else "binary"
            if old is None:
                return f"+++ {self.path} ({what}, {len(self.content)} bytes, new)\n"
            if old == self.content:
                return f"*** {self.path}: mode {oct(self.mode)}\n"
            return f"*** {self.path} ({what}, {len(old)} -> {len(self.content)} bytes)\n"
        old_lines = (old or b"").decode(errors="replace").splitlines(keepends=True)
        new_lines = self.content.decode().splitlines(keepends=True)
        text = "".join(difflib.unified_diff(old_lines, new_lines, "/dev/null" if old is None else str(self.path),
                                            str(self.path)))
        return text or f"*** {self.path}: mode {oct(self.mode)}\n"


def atomic_write(path: Path, content: bytes, mode: int) -> None:
    """Write via a temporary file in the same folder + fsync + rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
