"""The device side installs without the server stack, and the layout stays honest."""

import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("protocol", "agent", "client", "server")
SERVER_ONLY = {"fastapi", "sqlmodel", "uvicorn", "alembic", "typer", "rich", "numpy", "psycopg"}


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.lower()


def _closure(distribution: str) -> set[str]:
    """Every distribution ``distribution`` needs, its own extras left out."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [
            _name(r)
            for r in requires(name) or []
            if "extra ==" not in r and "python_version" not in r
        ]
    return seen


def test_device_distributions_pull_no_server_dependency() -> None:
    device = _closure("ferry-agent")
    assert {"ferry-agent", "ferry-protocol", "httpx", "paho-mqtt", "cryptography"} <= device
    assert not device & (SERVER_ONLY | {"ferry-server", "ferry-client", "sqlalchemy", "pydantic"})


def test_each_part_is_a_distribution_with_a_src_layout() -> None:
    for part in ("protocol", "agent", "client", "server"):
        assert (ROOT / part / "pyproject.toml").is_file(), part
        assert not (ROOT / part / "src" / "ferry" / "__init__.py").exists(), "ferry is a namespace"
    assert (ROOT / "client" / "src" / "ferry" / "cli" / "main.py").is_file()


# The delta decoder's numpy lane steps (ferry-protocol[fast]): imported by codec only
# when numpy is installed, on the first lane chunk (the test below).
OPTIONAL_ACCELERATORS = {"ferry.protocol.delta._lanes_np"}


def test_the_numpy_accelerator_is_imported_only_when_a_delta_is_decoded() -> None:
    code = (
        "import sys\n"
        "from ferry.protocol.delta import apply_delta_file, codec\n"
        "before = 'numpy' in sys.modules\n"
        "codec.uses_numpy()\n"
        "print(before, 'numpy' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"]


def test_protocol_and_agent_import_without_the_server_stack() -> None:
    # httpx imports rich for its own CLI when rich happens to be installed; on a
    # device it is not, so only what ferry itself adds on top of its deps counts.
    code = (
        "import sys, importlib, pkgutil, httpx, paho.mqtt.client, tenacity, cryptography\n"
        "baseline = set(sys.modules)\n"
        "import ferry.protocol, ferry.agent\n"
        "for pkg in (ferry.protocol, ferry.agent):\n"
        "    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        f"        if mod.name not in {sorted(OPTIONAL_ACCELERATORS)!r}:\n"
        "            importlib.import_module(mod.name)\n"
        f"bad = sorted(m for m in {sorted(SERVER_ONLY)!r} if m in sys.modules and m not in baseline)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_protocol_never_imports_server_or_agent() -> None:
    importing = re.compile(r"^\s*(from|import)\s+ferry\.(server|agent|client|cli)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "protocol" / "src").rglob("*.py")
        if importing.search(path.read_text("utf-8"))
    ]
    assert offenders == []


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text("utf-8")[:1500]
    assert "make demo" in head and "make test" in head
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile


def _groups() -> dict[str, set[str]]:
    import tomllib

    root = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    return {name: {_name(r) for r in reqs} for name, reqs in root["dependency-groups"].items()}


def test_make_demo_installs_the_four_parts_and_none_of_the_test_or_bench_packages() -> None:
    """`make demo` needs only the runtime (issue 15: the dev venv was 431 MB)."""
    makefile = (ROOT / "Makefile").read_text("utf-8")
    demo = re.search(r"^demo: (.*)$", makefile, re.MULTILINE)
    runtime = re.search(r"^\$\(RUNTIME\): .*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert demo is not None and demo.group(1).split() == ["$(RUNTIME)"]
    assert runtime is not None and "--group" not in runtime.group(1)
    needed = {_name(r) for part in PARTS for r in requires(f"ferry-{part}") or []}
    test_only = set().union(*_groups().values()) - needed
    assert {"pytest", "playwright", "onnx", "torch", "hypothesis"} <= test_only


def test_install_prints_no_setuptools_license_deprecation_box() -> None:
    """An SPDX `license` string, no license classifiers, a setuptools that takes them."""
    import tomllib

    for part in PARTS:
        config = tomllib.loads((ROOT / part / "pyproject.toml").read_text("utf-8"))
        assert isinstance(config["project"]["license"], str), part
        assert not any(c.startswith("License ::") for c in config["project"].get("classifiers", []))
        assert "setuptools>=77" in config["build-system"]["requires"], part
