"""The house's layout rules, checked on the source: frames flow one way through edge/'s rooms, and the other
parts share only contract/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("see", "decide", "act", "report", "install", "run")  # a room may import only the ones before it


def imported_modules(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(REPO))] = names
    return found


def test_edge_rooms_import_only_earlier_rooms() -> None:
    backwards = []
    for room in ROOMS:
        allowed = set(ROOMS[: ROOMS.index(room) + 1])
        for path, modules in imported_modules(REPO / "edge" / room).items():
            for module in modules:
                parts = module.split(".")
                if parts[0] == "edge" and len(parts) > 2 and parts[1] in ROOMS and parts[1] not in allowed:
                    backwards.append(f"{path} imports {module}")
    assert backwards == []


def test_contract_fleet_and_firmware_bridge_import_nothing_from_edge() -> None:
    offenders = [f"{path} imports {module}"
                 for part in ("contract", "fleet", "firmware_bridge")
                 for path, modules in imported_modules(REPO / part).items()
                 for module in modules if module == "edge" or module.startswith("edge.")]
    assert offenders == []


def test_contract_imports_nothing_of_ours() -> None:
    ours = ("edge", "fleet", "firmware_bridge", "tools")
    offenders = [f"{path} imports {module}" for path, modules in imported_modules(REPO / "contract").items()
                 for module in modules if module.split(".")[0] in ours]
    assert offenders == []
