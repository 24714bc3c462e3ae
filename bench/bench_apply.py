"""Delta apply alone, numpy and pure Python: peak RSS and warm MB/s per pair.

    python bench/bench_apply.py --work /tmp/dl/ba                 the issue's seven pairs
    python bench/bench_apply.py --work /tmp/dl/ba --pairs drift   name fragments, as bench_deltas

The pairs are bench_deltas.py's (MiniLM full and int8 when torch is installed, the
50 MB synthetic drift, the 30 MB shape change, PyTorch zip, GGUF and unknown
container pairs); each delta is built once with the installed encoder. Peak RSS
is measured exactly as bench_deltas.py measures its apply rows (one
``deltas_ops.py ferry-apply`` process, ``measure``); warm speed is the 2nd and
later of ``--runs`` applies in one process (``ferry-apply-warm``), as an agent
that has already loaded the decoder sees it. To measure another decoder, put
its ``protocol/src`` first on PYTHONPATH: the child processes inherit it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench_deltas import MB, OPS, Pair, _sha256, format_pairs, measure, real_pairs, synthetic_pairs

PAIRS = "MiniLM full,MiniLM int8,drift 50,shape change + fine-tune 30,PyTorch,GGUF,unknown"
MODES = {"numpy": "0", "pure Python": "1"}  # FERRY_DELTA_PURE_PYTHON


def _pairs(work: Path, wanted: str) -> list[Pair]:
    real, reason = real_pairs(work / "real") if "MiniLM" in wanted else ([], None)
    if reason:
        print(reason)
    found = real + synthetic_pairs(work, 50 * MB, huge=False) + format_pairs(work, 30 * MB)
    return [p for p in found if any(text in p.name for text in wanted.split(","))]


def _delta(pair: Pair, work: Path, sha: str) -> Path:
    """The pair's Ferry delta, built once per new file (some pair writers are not
    byte-stable across runs); the encoder's memory is not measured here."""
    from ferry.server.deltas import EncodeOptions, build_delta

    path = work / "deltas" / f"{pair.name.replace(' ', '_')}-{sha[:12]}.delta"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_delta(pair.old, pair.new, path, EncodeOptions(workers=2))
    return path


def _apply_args(pair: Pair, delta: Path, out: Path, sha: str) -> list[str]:
    return [str(pair.old), str(delta), str(out), str(pair.size), sha]


def _measure_pair(pair: Pair, work: Path, runs: int) -> dict[str, dict[str, object]]:
    sha = _sha256(pair.new)
    delta, out, timing = _delta(pair, work, sha), work / "result.bin", work / "timing.json"
    figures: dict[str, dict[str, object]] = {}
    for mode, flag in MODES.items():
        os.environ["FERRY_DELTA_PURE_PYTHON"] = flag
        os.environ["FERRY_BENCH_TIMING"] = str(timing)
        load = os.getloadavg()[0]
        rss = measure([*OPS, "ferry-apply", *_apply_args(pair, delta, out, sha)], 300).rss
        ok = out.exists() and _sha256(out) == sha
        warm = measure(
            [*OPS, "ferry-apply-warm", *_apply_args(pair, delta, out, sha), str(runs)], 600
        )
        timings = json.loads(timing.read_text()) if warm.returncode == 0 else {}
        figures[mode] = {
            "rss": rss,
            "ok": ok and out.exists() and _sha256(out) == sha,
            "load": load,
        }
        for key in ("walls", "cpus", "mains"):  # MB of output per second of each, warm runs
            figures[mode][key] = [round(pair.size / t / MB) for t in timings.get(key, [])[1:]]
        out.unlink(missing_ok=True)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="where pairs and deltas go")
    parser.add_argument("--pairs", default=PAIRS, help="comma-separated name fragments")
    parser.add_argument("--runs", type=int, default=3, help="applies per warm process")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; warm applies 2..{args.runs}; RSS measured as bench_deltas.py")
    results = []
    for pair in _pairs(args.work, args.pairs):
        figures = _measure_pair(pair, args.work, args.runs)
        results.append({"pair": pair.name, "size": pair.size, **figures})
        for mode, f in figures.items():
            print(f"{pair.name:32} {pair.size / MB:5.1f} MB  {mode:11}  RSS {f['rss'] / MB:4.1f} MB"
                  f"  MB/s wall {f['walls']}, per CPU s {f['cpus']}, main thread {f['mains']}"
                  f"  load {f['load']:.1f}{'' if f['ok'] else '  RESULT DIFFERS'}", flush=True)  # fmt: skip
    (args.work / "apply.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
