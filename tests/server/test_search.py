"""Search by namespace, name, tag, stage, alias and metric thresholds."""

from __future__ import annotations

from tests.server.conftest import API, Harness


def _versions(h: Harness, query: str, headers: dict[str, str] | None = None) -> list[str]:
    r = h.client.get(f"{API}/versions?{query}", headers=headers or h.admin)
    assert r.status_code == 200, r.text
    return [f"{v['model']}@{v['version']}" for v in r.json()]


def _populate(h: Harness) -> None:
    h.model("vision", "yolo")
    h.namespace("audio")
    h.model("audio", "whisper")
    h.register(metrics={"accuracy": 0.85, "latency_ms": 12}, tags=["baseline"])  # resnet@1
    h.register(metrics={"accuracy": 0.93, "latency_ms": 15}, tags=["candidate"])  # resnet@2
    h.register(name="yolo", metrics={"accuracy": 0.95, "map": 0.5})  # yolo@1
    h.register(ns="audio", name="whisper", metrics={"wer": 0.1})  # whisper@1
    h.client.post(
        f"{API}/models/vision/resnet/versions/2/stage", json={"stage": "Staging"}, headers=h.admin
    )
    h.client.put(
        f"{API}/models/vision/resnet/aliases/champion", json={"version": 1}, headers=h.admin
    )


def test_metric_thresholds(h: Harness) -> None:
    _populate(h)
    assert _versions(h, "metric=accuracy>=0.9") == ["resnet@2", "yolo@1"]
    assert _versions(h, "metric=accuracy>0.9&metric=latency_ms<=15") == ["resnet@2"]
    assert _versions(h, "metric=accuracy<0.9") == ["resnet@1"]
    assert _versions(h, "metric=wer==0.1") == ["whisper@1"]
    assert _versions(h, "metric=accuracy>=0.99") == []


def test_filters_by_name_tag_stage_alias_namespace(h: Harness) -> None:
    _populate(h)
    assert _versions(h, "namespace=audio") == ["whisper@1"]
    assert _versions(h, "name=resnet") == ["resnet@2", "resnet@1"]
    assert _versions(h, "tag=baseline") == ["resnet@1"]
    assert _versions(h, "stage=Staging") == ["resnet@2"]
    assert _versions(h, "alias=champion") == ["resnet@1"]
    assert _versions(h, "namespace=vision&metric=accuracy>=0.9&stage=None") == ["yolo@1"]


def test_results_are_limited_to_the_token_namespaces(h: Harness) -> None:
    _populate(h)
    viewer = h.token("viewer", ["audio"])
    assert _versions(h, "", viewer) == ["whisper@1"]


def test_bad_metric_filter_is_422(h: Harness) -> None:
    r = h.client.get(f"{API}/versions?metric=accuracy~0.9", headers=h.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_model_listing_filters(h: Harness) -> None:
    _populate(h)
    names = [m["name"] for m in h.client.get(f"{API}/models?q=o", headers=h.admin).json()]
    assert names == ["yolo"]
    tagged = h.client.get(f"{API}/models?tag=none-such", headers=h.admin).json()
    assert tagged == []
    r = h.client.get(f"{API}/models?namespace=vision", headers=h.admin).json()
    assert [m["name"] for m in r] == ["resnet", "yolo"]
