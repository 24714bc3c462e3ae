"""The SDK against a real `ferry server` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import ferry.client
from ferry.client import (
    ConflictError,
    FerryClient,
    ForbiddenError,
    InputError,
    NotFoundError,
    TransferProgress,
    TransportError,
    UnauthenticatedError,
    ValidationError,
)
from tests.client.helpers import Server, free_port, push_metadata


def test_public_names_are_sorted_and_importable_without_server_stack() -> None:
    assert ferry.client.__all__ == sorted(ferry.client.__all__, key=lambda n: (not n.isupper(), n))
    code = (
        "import sys, ferry.client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlmodel', 'uvicorn')]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_whoami_names_the_admin_token(admin: FerryClient) -> None:
    assert admin.health()
    me = admin.whoami()
    assert (me.role, me.namespaces) == ("admin", ["*"])


def test_token_lifecycle_and_revoked_token_is_refused(
    server: Server, admin: FerryClient, namespace: str
) -> None:
    created = admin.create_token("pipeline", "publisher", [namespace])
    assert created.token and created.token.startswith("fry_")
    assert created.id in [t.id for t in admin.list_tokens()]
    assert all(t.token is None for t in admin.list_tokens())
    with FerryClient(server.url, created.token) as pipeline:
        assert pipeline.whoami().role == "publisher"
        admin.revoke_token(created.id)
        with pytest.raises(UnauthenticatedError) as info:
            pipeline.whoami()
    assert (info.value.status, info.value.code) == (401, "unauthenticated")


def test_models_create_list_get_and_recreate_is_idempotent(
    admin: FerryClient, namespace: str
) -> None:
    admin.create_model(namespace, "resnet", description="classifier", tags=["cnn"])
    assert [m.name for m in admin.list_models(namespace)] == ["resnet"]
    model = admin.get_model(namespace, "resnet")
    assert (model.tags, model.latest_version, model.aliases) == (["cnn"], None, {})
    assert admin.create_model(namespace, "resnet") == model
    with pytest.raises(ConflictError):
        admin.create_namespace(namespace)
    with pytest.raises(NotFoundError) as info:
        admin.get_model(namespace, "missing")
    assert info.value.status == 404 and "missing" in info.value.message


def test_push_registers_version_and_repush_is_idempotent_without_reupload(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path]
) -> None:
    events: list[TransferProgress] = []
    first = admin.push_version(
        *model, bundle, progress=events.append, tags=["resnet"], **push_metadata()
    )  # type: ignore[arg-type]
    assert first.version == 1 and first.stage == "None"
    assert [f.path for f in first.files] == ["model.onnx", "labels.txt"]
    assert first.files[0].size == bundle[0].stat().st_size
    assert first.metadata["metrics"] == {"accuracy": 0.93}
    uploads = [e for e in events if e.name == "model.onnx"]
    assert len(uploads) > 1 and uploads[-1].done == uploads[-1].total and not uploads[-1].skipped

    events.clear()
    again = admin.push_version(*model, bundle, progress=events.append, **push_metadata())  # type: ignore[arg-type]
    assert again.version == 1
    assert {e.name for e in events} == {"model.onnx", "labels.txt"}
    assert all(e.skipped for e in events)
    assert admin.get_model(*model).latest_version == 1


def test_push_refuses_missing_file_and_duplicate_names(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="does not exist"):
        admin.push_version(*model, [tmp_path / "nope.onnx"], **push_metadata())  # type: ignore[arg-type]
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.txt").write_text("x")
    with pytest.raises(InputError, match="labels.txt"):
        admin.push_version(*model, [bundle[1], other / "labels.txt"], **push_metadata())  # type: ignore[arg-type]


def test_server_validation_error_carries_details(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path]
) -> None:
    with pytest.raises(ValidationError) as info:
        admin.push_version(*model, bundle, **push_metadata(created_by=""))  # type: ignore[arg-type]
    assert info.value.status == 422 and info.value.details


def test_stage_alias_tags_and_search(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path]
) -> None:
    ns, name = model
    v1 = admin.push_version(ns, name, bundle[1:], **push_metadata())  # type: ignore[arg-type]
    v2 = admin.push_version(ns, name, bundle, **push_metadata(metrics={"accuracy": 0.97}))  # type: ignore[arg-type]
    assert admin.set_stage(ns, name, v2.version, "Staging").stage == "Staging"
    assert admin.set_alias(ns, name, "champion", v2.version).version == 2
    assert admin.get_version(ns, name, "champion").version == 2
    assert admin.get_model(ns, name).aliases == {"champion": 2}
    assert admin.update_tags(ns, name, 1, add=["baseline", "old"]).tags == ["baseline", "old"]
    assert admin.update_tags(ns, name, 1, remove=["old"]).tags == ["baseline"]

    def found(**filters: object) -> list[int]:
        return sorted(v.version for v in admin.search(namespace=ns, **filters))  # type: ignore[arg-type]

    assert found(metrics={"accuracy": (">=", 0.95)}) == [2]
    assert found(metrics=["accuracy>0.9", "accuracy<0.95"]) == [1]
    assert found(stage="Staging") == [2]
    assert found(tag="baseline") == [1]
    assert found(alias="champion") == [2]
    admin.delete_alias(ns, name, "champion")
    assert found(alias="champion") == []
    assert v1.version == 1


@pytest.mark.parametrize("bad", ["accuracy=>0.9", "accuracy>=high", ">=0.9", "accuracy>=nan"])
def test_malformed_metric_filter_is_refused_before_any_request(
    admin: FerryClient, bad: str
) -> None:
    with pytest.raises(InputError, match="malformed metric filter"):
        admin.search(metrics=[bad])


def test_illegal_stage_transition_conflicts(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path]
) -> None:
    v = admin.push_version(*model, bundle[1:], **push_metadata())  # type: ignore[arg-type]
    admin.set_stage(*model, v.version, "Archived")
    with pytest.raises(ConflictError):
        admin.set_stage(*model, v.version, "Production")


def test_viewer_cannot_push(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path]
) -> None:
    viewer = admin.create_token("reader", "viewer", [model[0]])
    with FerryClient(server.url, viewer.token) as client, pytest.raises(ForbiddenError):
        client.push_version(*model, bundle[1:], **push_metadata())  # type: ignore[arg-type]


def test_unreachable_server_says_how_to_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with FerryClient(url, "fry_x", retries=1) as client, pytest.raises(TransportError) as info:
        client.whoami()
    assert info.value.code == "unreachable"
    assert f"{url}/healthz" in info.value.message
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_get_is_retried_on_transient_network_errors(server: Server) -> None:
    calls: list[str] = []
    real = httpx.HTTPTransport()

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ConnectError("connection reset", request=request)
        return real.handle_request(request)

    with FerryClient(server.url, server.admin_token, transport=httpx.MockTransport(flaky)) as c:
        assert c.whoami().role == "admin"
    assert calls == ["GET", "GET"]


def test_post_is_not_retried(server: Server) -> None:
    calls: list[str] = []

    def broken(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ConnectError("connection reset", request=request)

    client = FerryClient(server.url, server.admin_token, transport=httpx.MockTransport(broken))
    with client, pytest.raises(TransportError):
        client.create_namespace("never")
    assert calls == ["POST"]


def test_audit_lists_and_exports_writes(admin: FerryClient, namespace: str, tmp_path: Path) -> None:
    entries = admin.list_audit(limit=1000)
    assert any(e.action.startswith("namespace") and namespace in (e.target or "") for e in entries)
    out = tmp_path / "audit.jsonl"
    with out.open("wb") as fh:
        written = admin.export_audit(fh)
    lines = out.read_text().splitlines()
    assert written == out.stat().st_size and len(lines) >= len(entries)
