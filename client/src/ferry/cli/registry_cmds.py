"""Registry commands: namespaces, models, versions, search, stages, aliases, tags."""

from __future__ import annotations

from typing import Annotated

import typer

from ferry.cli._common import (
    as_ref,
    client,
    fields,
    handle_errors,
    out,
    parse_ref,
    parse_version_ref,
    print_json,
    table,
)
from ferry.client import InputError, Model, Version
from ferry.client._search import parse_threshold

app = typer.Typer()
namespace_app = typer.Typer(help="Create and list namespaces (one per team).", no_args_is_help=True)
model_app = typer.Typer(help="Create, list and show registered models.", no_args_is_help=True)
alias_app = typer.Typer(help="Point aliases such as `champion` at versions.", no_args_is_help=True)
tag_app = typer.Typer(help="Add or remove tags on a version.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}


# --- namespaces ---------------------------------------------------------------------------


@namespace_app.command(
    "create", epilog="Example: ferry namespace create vision --require-distinct-approver"
)
@handle_errors
def namespace_create(
    name: Annotated[str, typer.Argument(help="Namespace name, e.g. vision.")],
    description: Annotated[str | None, typer.Option(help="What the team keeps here.")] = None,
    require_distinct_approver: Annotated[
        bool,
        typer.Option(
            help="Production must be approved by someone other than the version's publisher."
        ),
    ] = False,
) -> None:
    """Create a namespace (admin)."""
    with client() as ferry:
        ns = ferry.create_namespace(
            name, description=description, require_distinct_approver=require_distinct_approver
        )
    out.print(f"created namespace {ns.name}")


@namespace_app.command("list", epilog="Example: ferry namespace list --json")
@handle_errors
def namespace_list(as_json: JsonOpt = False) -> None:
    """List the namespaces your token can see."""
    with client() as ferry:
        spaces = ferry.list_namespaces()
    if as_json:
        print_json([n.to_json() for n in spaces])
        return
    table(
        ["name", "distinct approver", "description"],
        [(n.name, "yes" if n.require_distinct_approver else "no", n.description) for n in spaces],
    )


# --- models -------------------------------------------------------------------------------


@model_app.command(
    "create",
    epilog="Example: ferry model create vision/resnet --description 'image classifier' --tag cnn",
)
@handle_errors
def model_create(
    name: Annotated[str, typer.Argument(help="NS/MODEL, e.g. vision/resnet.")],
    description: Annotated[str | None, typer.Option(help="One line about the model.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Model tag (repeat).")] = None,
) -> None:
    """Register a new model in a namespace (publisher)."""
    ns, model_name, _ = _model_only(name)
    with client() as ferry:
        model = ferry.create_model(ns, model_name, description=description, tags=tag or [])
    out.print(f"created model {model.namespace}/{model.name}")


@model_app.command("list", epilog="Example: ferry model list --namespace vision --tag cnn")
@handle_errors
def model_list(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Name contains this text.")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only models with this tag.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered models."""
    with client() as ferry:
        models = ferry.list_models(namespace, q=query, tag=tag)
    if as_json:
        print_json([m.to_json() for m in models])
        return
    table(
        ["model", "latest", "aliases", "tags", "description"],
        [
            (
                f"{m.namespace}/{m.name}",
                m.latest_version,
                _aliases(m),
                ", ".join(m.tags),
                m.description,
            )
            for m in models
        ],
    )


@model_app.command("show", epilog="Example: ferry model show vision/resnet")
@handle_errors
def model_show(
    name: Annotated[str, typer.Argument(help="NS/MODEL.")], as_json: JsonOpt = False
) -> None:
    """Show one model: description, tags, latest version, aliases."""
    ns, model_name, _ = _model_only(name)
    with client() as ferry:
        model = ferry.get_model(ns, model_name)
    _print_model(model, as_json)


def _model_only(text: str) -> tuple[str, str, None]:
    ns, model, ref = parse_ref(text)
    if ref is not None:
        raise InputError(f"{text!r}: give NS/MODEL without @{ref} here")
    return ns, model, None


def _aliases(model: Model) -> str:
    return ", ".join(f"{a}→{v}" for a, v in sorted(model.aliases.items()))


def _print_model(model: Model, as_json: bool) -> None:
    if as_json:
        print_json(model.to_json())
        return
    fields(
        [
            ("model", f"{model.namespace}/{model.name}"),
            ("description", model.description),
            ("tags", ", ".join(model.tags)),
            ("latest version", model.latest_version),
            ("aliases", _aliases(model)),
            ("created", model.created_at),
        ]
    )


# --- versions -----------------------------------------------------------------------------


@app.command(epilog="Example: ferry versions vision/resnet --json")
@handle_errors
def versions(
    name: Annotated[str, typer.Argument(help="NS/MODEL.")], as_json: JsonOpt = False
) -> None:
    """List a model's versions, newest first."""
    ns, model_name, _ = _model_only(name)
    with client() as ferry:
        found = ferry.list_versions(ns, model_name)
    _print_versions(found, as_json)


@app.command(
    epilog="Examples:\n\n  ferry show vision/resnet\n\n  ferry show vision/resnet@champion --json"
)
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="NS/MODEL or NS/MODEL@REF (version or alias).")],
    as_json: JsonOpt = False,
) -> None:
    """Show a model, or one version with its files, metadata and manifest digest."""
    ns, model_name, ref = parse_ref(name)
    with client() as ferry:
        if ref is None:
            _print_model(ferry.get_model(ns, model_name), as_json)
            return
        version = ferry.get_version(ns, model_name, as_ref(ref))
    if as_json:
        print_json(version.to_json())
        return
    meta = version.metadata
    fields(
        [
            ("version", version.ref),
            ("stage", version.stage),
            ("aliases", ", ".join(version.aliases)),
            ("tags", ", ".join(version.tags)),
            ("format", version.format),
            ("flavor", version.flavor),
            ("hardware", ", ".join(version.hardware)),
            ("created", version.created_at),
            ("pushed by", version.created_by_actor),
            ("created_by", meta.get("created_by")),
            ("run_id", meta.get("run_id")),
            ("git_commit", meta.get("git_commit")),
            ("metrics", meta.get("metrics")),
            ("hyperparameters", meta.get("hyperparameters")),
            ("manifest", version.manifest_sha256),
        ]
    )
    table(["file", "size", "sha256"], [(f.path, f.size, f.sha256) for f in version.files])


def _print_versions(found: list[Version], as_json: bool) -> None:
    if as_json:
        print_json([v.to_json() for v in found])
        return
    table(
        ["version", "stage", "aliases", "tags", "metrics", "created"],
        [
            (v.ref, v.stage, ", ".join(v.aliases), ", ".join(v.tags), _metrics(v), v.created_at)
            for v in found
        ],
    )


def _metrics(version: Version) -> str:
    metrics = version.metadata.get("metrics") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))


@app.command(
    epilog="Example: ferry search --namespace vision --stage Production "
    "--metric 'accuracy>=0.9' --metric 'latency_ms<20'"
)
@handle_errors
def search(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name.")] = None,
    tag: Annotated[str | None, typer.Option(help="Version tag.")] = None,
    stage: Annotated[
        str | None, typer.Option(help="None, Staging, Production or Archived.")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Versions holding this alias.")] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="Threshold NAME OP NUMBER with OP in >=, <=, >, <, == (repeat; all must hold)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find versions by name, tag, stage, alias and metric thresholds."""
    thresholds = [parse_threshold(m) for m in metric or []]
    with client() as ferry:
        found = ferry.search(
            namespace=namespace,
            name=name,
            tag=tag,
            stage=_stage(stage) if stage else None,
            alias=alias,
            metrics=[f"{n}{op}{v!r}" for n, op, v in thresholds],
        )
    _print_versions(found, as_json)


# --- stage, aliases, tags -----------------------------------------------------------------


def _stage(text: str) -> str:
    stage = STAGES.get(text.lower())
    if stage is None:
        raise InputError(f"unknown stage {text!r}; use one of {', '.join(STAGES.values())}")
    return stage


@app.command(
    epilog="Examples:\n\n  ferry promote vision/resnet@3 Staging\n\n"
    "  ferry promote vision/resnet@3 Production --comment 'eval report #42'"
)
@handle_errors
def promote(
    name: Annotated[str, typer.Argument(help="NS/MODEL@REF (version or alias).")],
    stage: Annotated[str, typer.Argument(help="Staging, Production, Archived or None.")],
    comment: Annotated[str | None, typer.Option(help="Why; kept in the audit log.")] = None,
) -> None:
    """Move a version to another stage (publisher: Staging; approver: any)."""
    ns, model_name, ref = parse_version_ref(name)
    target = _stage(stage)
    with client() as ferry:
        version = ferry.set_stage(ns, model_name, ref, target, comment=comment)
    out.print(f"{version.ref} is now in stage {version.stage}")


@alias_app.command("set", epilog="Example: ferry alias set vision/resnet@3 champion")
@handle_errors
def alias_set(
    name: Annotated[str, typer.Argument(help="NS/MODEL@REF: the version the alias will point at.")],
    alias: Annotated[str, typer.Argument(help="Alias name, e.g. champion.")],
) -> None:
    """Point an alias at a version (moves it if it already exists)."""
    ns, model_name, ref = parse_version_ref(name)
    with client() as ferry:
        number = ref if isinstance(ref, int) else ferry.get_version(ns, model_name, ref).version
        binding = ferry.set_alias(ns, model_name, alias, number)
    out.print(f"{ns}/{model_name}@{binding.alias} → version {binding.version}")


@alias_app.command("delete", epilog="Example: ferry alias delete vision/resnet champion")
@handle_errors
def alias_delete(
    name: Annotated[str, typer.Argument(help="NS/MODEL.")],
    alias: Annotated[str, typer.Argument(help="Alias to remove.")],
) -> None:
    """Remove an alias."""
    ns, model_name, _ = _model_only(name)
    with client() as ferry:
        ferry.delete_alias(ns, model_name, alias)
    out.print(f"deleted alias {alias} of {ns}/{model_name}")


@tag_app.command("add", epilog="Example: ferry tag add vision/resnet@3 reviewed gpu")
@handle_errors
def tag_add(
    name: Annotated[str, typer.Argument(help="NS/MODEL@REF.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to add.")],
) -> None:
    """Add tags to a version."""
    _retag(name, add=tags, remove=[])


@tag_app.command("remove", epilog="Example: ferry tag remove vision/resnet@3 gpu")
@handle_errors
def tag_remove(
    name: Annotated[str, typer.Argument(help="NS/MODEL@REF.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to remove.")],
) -> None:
    """Remove tags from a version."""
    _retag(name, add=[], remove=tags)


def _retag(name: str, *, add: list[str], remove: list[str]) -> None:
    ns, model_name, ref = parse_version_ref(name)
    with client() as ferry:
        version = ferry.update_tags(ns, model_name, ref, add=add, remove=remove)
    out.print(f"{version.ref} tags: {', '.join(version.tags) or '(none)'}")
