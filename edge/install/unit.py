"""The systemd unit: rendered from the packaged template, pointing at the config and its credentials."""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def render_unit(template: str, config_path: str, credentials: Sequence[str], credentials_dir: str,
                exec_path: str | None = None) -> str:
    """The unit with ExecStart pointing at `config_path` and one LoadCredential= per credential file."""
    out: list[str] = []
    credentials_written = False
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
            binary = exec_path or argv[0]
            line = f"ExecStart={binary} run --config {config_path}"
        elif line.startswith("LoadCredential="):
            if not credentials_written:
                out.extend(f"LoadCredential={name}:{credentials_dir}/{name}" for name in credentials)
                credentials_written = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive in a unit file, in order (keys may repeat)."""
    section = ""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found
