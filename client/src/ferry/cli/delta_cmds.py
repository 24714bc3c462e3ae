"""`ferry delta create|apply|inspect`: Ferry's model-aware deltas without a server.

A training pipeline or a firmware team measures what a rollout will ship before it
starts, and a device team can rebuild and check a file by hand. The encoder is
:mod:`ferry.protocol.delta.encode` (no server dependencies); the decoder is the
device's own, so `apply` refuses exactly what a device refuses.

Exit codes: 0 done; 1 the patch was refused (its code is printed, nothing is
written under the output name); 2 bad usage or an unreadable input file.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli._common import print_json
from ferry.protocol.delta import (
    ChunkRecord,
    DeltaCorruptError,
    DeltaError,
    DeltaIndex,
    DeltaTruncatedError,
    apply_delta_file,
    read_index,
)
from ferry.protocol.delta.codec import BSDIFF_MAGIC
from ferry.protocol.delta.encode import (
    EncodeOptions,
    Tensor,
    build_delta,
    format_of,
    read_layout,
    sidecar,
)

app = typer.Typer(
    help="Build, apply and inspect model deltas locally (no server needed).", no_args_is_help=True
)
WIDTH = 80
_SHOWN = 40  # chunk rows printed by `inspect` without --all

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise _fail(f"{what} {path} is not a readable file", 2)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


# --- create -----------------------------------------------------------------------------------


CREATE_EPILOG = """Example:

  ferry delta create v1/model.gguf v2/model.gguf -o v1-v2.delta --workers 2

OpenVINO IR: pass the .bin files; each one's .xml beside it gives the layout."""
APPLY_EPILOG = """Example:

  ferry delta apply v1/model.gguf v1-v2.delta -o v2/model.gguf \\
    --expect-sha256 3c275e338e4b676d9b95596e9e33a6d4eab7d7a9d7a0fb6759bd4fa12a061351"""
INSPECT_EPILOG = """Example:

  ferry delta inspect v1-v2.delta --old v1/model.gguf --new v2/model.gguf

In the tensor column, "=" marks a chunk coded against the same tensor of the old
file, "<" one coded against other old bytes."""


@app.command("create", epilog=CREATE_EPILOG)
def create(
    old: Annotated[Path, typer.Argument(help="The version devices run now.")],
    new: Annotated[Path, typer.Argument(help="The version to ship.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the patch.")],
    workers: Annotated[int, typer.Option(help="Encoder processes.", min=1)] = 1,
    chunk_size: Annotated[
        int, typer.Option(help="Bytes per chunk (multiple of 8).", min=8)
    ] = EncodeOptions.chunk_size,
    as_json: JsonOpt = False,
) -> None:
    """Write a delta that rebuilds NEW from OLD, and say how big it is."""
    _readable(old, "old file")
    _readable(new, "new file")
    if chunk_size % 8:
        raise _fail("--chunk-size must be a multiple of 8", 2)
    started = time.monotonic()
    result = build_delta(old, new, output, EncodeOptions(chunk_size=chunk_size, workers=workers))
    seconds = time.monotonic() - started
    report = {
        "path": str(output), "size": result.size, "sha256": result.sha256,
        "target_size": result.target_size, "target_sha256": result.target_sha256,
        "base_sha256": result.base_sha256, "fraction": result.size / max(result.target_size, 1),
        "old_format": _format(old), "new_format": _format(new), "seconds": round(seconds, 3),
        "chunks": result.chunks, "payload_bytes": result.payload_bytes,
    }  # fmt: skip
    if as_json:
        print_json(report)
        return
    codecs = ", ".join(f"{name} {count}" for name, count in sorted(result.chunks.items()))
    typer.echo(f"wrote {output}")
    typer.echo(
        f"  delta     {result.size:>15,} bytes  {_pct(result.size, result.target_size)}"
        " of the new file"
    )
    typer.echo(f"  new file  {result.target_size:>15,} bytes  ({report['new_format']})")
    typer.echo(f"  old file  {old.stat().st_size:>15,} bytes  ({report['old_format']})")
    typer.echo(f"  chunks    {sum(result.chunks.values()):>15,}  {codecs}")
    typer.echo(f"  new sha256  {result.target_sha256}")
    typer.echo(f"  built in  {seconds:.1f} s")


def _format(path: Path) -> str:
    with open(path, "rb") as handle:
        return format_of(handle.fileno(), path.stat().st_size, sidecar(path))


# --- apply ------------------------------------------------------------------------------------


@app.command("apply", epilog=APPLY_EPILOG)
def apply(
    old: Annotated[Path, typer.Argument(help="The file the patch was built from.")],
    patch: Annotated[Path, typer.Argument(help="A Ferry delta or a BSDIFF40 patch.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    expect_sha256: Annotated[
        str,
        typer.Option("--expect-sha256", help="sha256 the result must have (from the manifest)."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the new file with the device's decoder; verified before it is renamed."""
    _readable(old, "old file")
    _readable(patch, "patch")
    expected = expect_sha256.lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise _fail("--expect-sha256 must be 64 hex digits", 2)
    started = time.monotonic()
    try:
        size = _target_size(patch)
        apply_delta_file(old, patch, output, size, expected)
    except DeltaError as exc:
        raise _fail(f"{exc.code}: {exc} — nothing was written to {output}", 1) from None
    seconds = time.monotonic() - started
    if as_json:
        print_json(
            {"path": str(output), "size": size, "sha256": expected, "seconds": round(seconds, 3)}
        )
        return
    rate = size / seconds / 1e6 if seconds > 0 else 0.0
    typer.echo(
        f"wrote {output}: {size:,} bytes, sha256 verified, {seconds:.1f} s ({rate:.0f} MB/s)"
    )


def _target_size(patch: Path) -> int:
    """The result's size as the patch declares it; the sha256 check binds it anyway."""
    with open(patch, "rb") as handle:
        head = handle.read(32)
    if head[:8] != BSDIFF_MAGIC:
        return read_index(patch).header.target_size
    if len(head) < 32:
        raise DeltaTruncatedError(f"{patch} ends inside its BSDIFF40 header")
    size = int.from_bytes(head[24:32], "little")
    if size >> 63:  # sign-magnitude: a negative size
        raise DeltaCorruptError(f"{patch} declares a negative size")
    return size


# --- inspect ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Tensors of a file by start offset, to name the tensor a byte offset falls in."""

    tensors: list[Tensor]

    @classmethod
    def of(cls, path: Path | None) -> _Layout | None:
        if path is None:
            return None
        _readable(path, "file")
        with open(path, "rb") as handle:
            tensors = read_layout(handle.fileno(), path.stat().st_size, sidecar(path))
        return cls(tensors or [])

    def name_at(self, offset: int) -> str | None:
        at = bisect.bisect_right([t.offset for t in self.tensors], offset) - 1
        if at >= 0 and offset < self.tensors[at].offset + self.tensors[at].length:
            return self.tensors[at].name.split("\x00")[0]
        return None


@app.command("inspect", epilog=INSPECT_EPILOG)
def inspect(
    patch: Annotated[Path, typer.Argument(help="A Ferry delta.")],
    old: Annotated[Path | None, typer.Option(help="The old file: names source tensors.")] = None,
    new: Annotated[Path | None, typer.Option(help="The new file: names chunk tensors.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every chunk.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Chunks, codec per chunk, sizes, and which old tensor each chunk is coded against."""
    _readable(patch, "patch")
    try:
        index = read_index(patch)
    except DeltaError as exc:
        raise _fail(f"{exc.code}: {exc}", 1) from None
    rows = _chunk_rows(index, _Layout.of(old), _Layout.of(new))
    if as_json:
        print_json(_inspect_json(index, rows))
        return
    _print_summary(index, rows)
    shown = rows if show_all else rows[:_SHOWN]
    _print_chunks(shown)
    if len(shown) < len(rows):
        typer.echo(f"... {len(rows) - len(shown)} more chunks (--all lists them)")


def _chunk_rows(
    index: DeltaIndex, old: _Layout | None, new: _Layout | None
) -> list[dict[str, Any]]:
    rows = []
    for number, record in enumerate(index.records):
        row = _record_dict(number, record)
        if new is not None:
            row["tensor"] = new.name_at(record.out_offset)
        if old is not None and record.src_len:
            row["source_tensor"] = old.name_at(record.src_offset)
        if new is not None and old is not None:
            row["aligned"] = row["tensor"] is not None and row["tensor"] == row.get("source_tensor")
        rows.append(row)
    return rows


def _record_dict(number: int, record: ChunkRecord) -> dict[str, Any]:
    return {
        "index": number, "out_offset": record.out_offset, "out_size": record.out_size,
        "codec": record.codec.name.lower(), "op": record.op.name.lower(), "width": record.width,
        "src_offset": record.src_offset, "src_len": record.src_len,
        "payload_len": record.payload_len, "sha256": record.sha256.hex(),
    }  # fmt: skip


def _by_codec(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = totals.setdefault(row["codec"], {"chunks": 0, "output": 0, "payload": 0})
        entry["chunks"] += 1
        entry["output"] += row["out_size"]
        entry["payload"] += row["payload_len"]
    return totals


def _inspect_json(index: DeltaIndex, rows: list[dict[str, Any]]) -> dict[str, Any]:
    header = index.header
    return {
        "format": "ferry-delta/1", "size": index.size,
        "fraction": index.size / max(header.target_size, 1),
        "header": {"chunk_size": header.chunk_size, "chunks": header.chunks,
                   "base_size": header.base_size, "base_sha256": header.base_sha256,
                   "target_size": header.target_size, "target_sha256": header.target_sha256},
        "codecs": _by_codec(rows), "chunks": rows,
    }  # fmt: skip


def _print_summary(index: DeltaIndex, rows: list[dict[str, Any]]) -> None:
    header = index.header
    typer.echo(
        f"ferry-delta/1, {index.size:,} bytes = {_pct(index.size, header.target_size)}"
        f" of the new file, {header.chunks:,} chunks"
    )
    typer.echo(f"new  {header.target_size:>15,} bytes  sha256 {header.target_sha256[:16]}…")
    if header.base_sha256 is None:
        typer.echo("old  (none: a compressed full file)")
    else:
        typer.echo(f"old  {header.base_size:>15,} bytes  sha256 {header.base_sha256[:16]}…")
    typer.echo("")
    typer.echo(f"{'codec':<10}{'chunks':>8}{'output':>16}{'payload':>16}{'payload/output':>16}")
    for name, entry in sorted(_by_codec(rows).items()):
        typer.echo(
            f"{name:<10}{entry['chunks']:>8,}{entry['output']:>16,}"
            f"{entry['payload']:>16,}{_pct(entry['payload'], entry['output']):>16}"
        )
    typer.echo("")


def _print_chunks(rows: list[dict[str, Any]]) -> None:
    head = f"{'#':>5} {'offset':>13} {'size':>10} {'codec':<9} {'lanes':<8} {'payload':>10}  "
    typer.echo(head + "tensor")
    room = WIDTH - len(head)
    for row in rows:
        lanes = f"{row['op']}/{row['width']}" if row["op"] != "none" else "-"
        line = (
            f"{row['index']:>5} {row['out_offset']:>13,} {row['out_size']:>10,} "
            f"{row['codec']:<9} {lanes:<8} {row['payload_len']:>10,}  "
        )
        typer.echo(line + _tensor_cell(row, room))


def _tensor_cell(row: dict[str, Any], room: int) -> str:
    """The chunk's tensor; "=" aligned with the same old tensor, "<" coded against another."""
    name: str | None = row.get("tensor")
    if name is None:
        return "" if "tensor" not in row else "(outside tensors)"[:room]
    aligned = row.get("aligned")
    mark = "" if aligned is None or not row.get("source_tensor") else "= " if aligned else "< "
    text = mark + name
    return text if len(text) <= room else text[: room - 1] + "…"
