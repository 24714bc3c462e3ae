"""The import arrows the architecture allows (docs/architecture.md), checked on the source.

Parts: protocol at the bottom; agent and client on protocol only; the server on
protocol. Inside the server, concepts form layers: a concept imports only
`core` and the concepts below it; only route modules (``routes.py``,
``*_routes.py``, the check-in ``fast_path.py``) import the HTTP layer `api`;
`app`, `wiring`, `metadata` and `migrations` compose everything. Imports under
``if TYPE_CHECKING:`` are annotations, not arrows, and are not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "src" / "ferry" / "server"

# Lowest first: each concept may import core and the concepts listed before it.
SERVER_LAYERS = [
    "core",
    "audit",
    "auth",
    "trust",
    "webhooks",
    "registry",
    "blobs",
    "fleet",
    "rollouts",
    "checkin",
    "deltas",
    "mqtt",
    "dashboard",
]
COMPOSITION = {"api", "app", "wiring", "metadata", "migrations", "backup"}
PARTS = {
    "protocol": set(),
    "agent": {"protocol"},
    "client": {"protocol"},
    "cli": {"protocol", "client", "server", "agent"},  # `ferry server`, the demo, the simulator
    "server": {"protocol"},
}


def _imports(path: Path) -> Iterator[str]:
    """Modules imported at run time (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text("utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _server_unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["ferry", "server"] or len(parts) < 3:
        return None
    return parts[2]


def _is_route_module(path: Path) -> bool:
    return path.name in ("routes.py", "fast_path.py", "fast_status.py") or path.name.endswith(
        "_routes.py"
    )


def server_violations() -> list[str]:
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        rel = path.relative_to(SERVER)
        unit = rel.parts[0].removesuffix(".py")
        if unit in COMPOSITION or unit == "__init__":
            continue
        allowed = set(SERVER_LAYERS[: SERVER_LAYERS.index(unit) + 1])
        for module in _imports(path):
            target = _server_unit(module)
            if target is None or target == unit:
                continue
            if target == "api" and _is_route_module(path):
                continue
            if target not in allowed:
                found.append(f"{rel} imports {module}")
    return sorted(set(found))


def part_violations() -> list[str]:
    found = []
    for part, allowed in PARTS.items():
        folder = "client" if part == "cli" else part
        for path in (ROOT / folder / "src" / "ferry" / part).rglob("*.py"):
            for module in _imports(path):
                names = module.split(".")
                if (
                    names[0] == "ferry"
                    and len(names) > 1
                    and names[1] != part
                    and names[1] not in allowed
                ):
                    found.append(f"{path.relative_to(ROOT)} imports {module}")
    return sorted(set(found))


def test_every_server_module_belongs_to_a_known_layer() -> None:
    units = {p.relative_to(SERVER).parts[0].removesuffix(".py") for p in SERVER.rglob("*.py")}
    assert units - {"__init__"} <= set(SERVER_LAYERS) | COMPOSITION


def test_server_concepts_import_only_core_and_the_concepts_below_them() -> None:
    assert server_violations() == []


def test_parts_import_only_the_parts_below_them() -> None:
    assert part_violations() == []


def test_the_checker_sees_a_forbidden_arrow(tmp_path: Path) -> None:
    """The registry calling rollouts (what this layout removed) would be caught."""
    module = tmp_path / "m.py"
    module.write_text(
        "from ferry.server.rollouts.bindings import on_alias_set\n"
        "if TYPE_CHECKING:\n    from ferry.server.mqtt import X\n"
    )
    imported = set(_imports(module))
    assert "ferry.server.rollouts.bindings" in imported
    assert "ferry.server.mqtt" not in imported
    registry_may = set(SERVER_LAYERS[: SERVER_LAYERS.index("registry") + 1])
    assert _server_unit("ferry.server.rollouts.bindings") not in registry_may
