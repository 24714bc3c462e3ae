"""Devices in the field upgrade the agent: a state directory written by the schema-1 agent.

``tests/agent/data/state_v1`` was written by the agent before the install record
was typed (see its README). The upgraded agent must read it, keep running the
installed model, remember the versions on disk as installed, and update further.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.agent.errors import InstallError
from ferry.agent.installer import Slot, version_name
from ferry.agent.record import SCHEMA, InstallRecord, Outcome, Update, load_record, save_record
from ferry.protocol.documents import AgentState, BundleManifest
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import envelope_bytes, parse_envelope
from tests.agent.conftest import Device, write_config
from tests.support.device_repository import Bundle, DeviceRepository
from tests.support.trust import Authority

FIXTURE = Path(__file__).parent / "data" / "state_v1"
V3_FILES = {"model.onnx": b"v3-weights" * 10, "labels.txt": b"cat\ndog\nbird\n"}


def _authority(facts: dict[str, Any]) -> Authority:
    keys = {name: SigningKey.from_pem(pem.encode()) for name, pem in facts["keys"].items()}
    return Authority(root=keys["root"], bundles=keys["bundles"], director=keys["director"])


@pytest.fixture
def old_device(tmp_path: Path) -> Iterator[tuple[Device, DeviceRepository]]:
    """The fixture's state dir, served by a repository holding the same keys and keyring."""
    facts = json.loads((FIXTURE / "authority.json").read_text())
    state = tmp_path / "device" / "state"
    shutil.copytree(FIXTURE / "state", state, symlinks=True)
    # The old agent left an empty staging folder, which git cannot keep.
    (state / "models" / "main" / "staging").mkdir(exist_ok=True)
    (state / "credential").chmod(0o600)
    repo = DeviceRepository(_authority(facts), device_id=facts["device_id"])
    repo.credential, repo.sequence = facts["credential"], facts["sequence"]
    repo.keyrings = {1: json.loads((state / "trust.json").read_text())["keyring"]}
    repo.start()
    config = write_config(
        tmp_path / "device", f'[server]\nurl = "{repo.url}"\n', device_id=facts["device_id"]
    )
    device = Device(tmp_path / "device", repo, config)
    yield device, repo
    device.close()
    repo.close()


def _installed_bundle(repo: DeviceRepository, slot: Slot, version: int) -> Bundle:
    """Serve the manifest of a version the old agent installed (as the real server would)."""
    found = next(v for v in slot.all_installed() if v.manifest.version == version)
    envelope = json.loads((slot.versions / f"{found.name}.manifest.json").read_text())
    repo.manifests[found.digest] = envelope_bytes(envelope)
    return Bundle(BundleManifest.from_dict(envelope["signed"]), envelope, found.digest, {})


def test_schema_1_state_dir_keeps_its_model_and_updates_further(
    old_device: tuple[Device, DeviceRepository],
) -> None:
    device, repo = old_device
    before = device.models()
    assert device.current_version() == 2
    v2 = _installed_bundle(repo, device.slot(), 2)
    repo.target({"main": v2})
    device.agent.recover()
    device.sync()
    assert device.models() == before, "the upgraded agent must keep running v2 untouched"
    assert not any(path.startswith("/api/v1/blobs") for _, path, _ in repo.requests)

    repo.target({"main": repo.add_bundle(V3_FILES, version=3)})
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 3
    trust = json.loads((device.config.state_dir / "trust.json").read_text())
    assert trust["last_sequence"] == repo.sequence
    assert trust["last_signers"] == [repo.authority.director.public.keyid]
    record = json.loads((device.config.state_dir / "slots" / "main.json").read_text())
    assert record["schema"] == SCHEMA
    assert sorted(item["version"] for item in record["installed"]) == [1, 2, 3]


def test_migrated_memory_refuses_another_manifest_for_a_version_the_old_agent_installed(
    old_device: tuple[Device, DeviceRepository],
) -> None:
    device, repo = old_device
    before = device.models()
    impostor = repo.add_bundle({"model.onnx": b"not the v1 that was installed"}, version=1)
    repo.target({"main": impostor}, allow_downgrade=True)
    device.sync()
    assert repo.reports_for("main")[-1]["error_code"] == "version_conflict"
    assert device.models() == before


def test_a_schema_1_floor_belongs_to_the_director_keys_of_its_keyring(
    old_device: tuple[Device, DeviceRepository],
) -> None:
    """Its signers were not recorded: the floor holds until the director key is rotated out."""
    device, repo = old_device
    floor = device.agent.trust.floor
    assert floor.sequence == repo.sequence
    assert floor.signers == {repo.authority.director.public.keyid}


def test_status_reads_a_schema_1_record_without_rewriting_it(
    old_device: tuple[Device, DeviceRepository],
) -> None:
    device, _ = old_device
    record = device.config.state_dir / "slots" / "main.json"
    saved = record.read_bytes()
    status = device.agent.status()
    assert status["slots"]["main"]["state"] == "idle"
    assert status["slots"]["main"]["last"]["to_version"] == 2
    assert record.read_bytes() == saved


def test_record_round_trips_through_its_json(tmp_path: Path) -> None:
    record = InstallRecord(
        slot="main",
        state=AgentState.DOWNLOADING,
        resumes=1,
        update=Update(digest="ab" * 32, sequence=7, to_version=3, timings={"download_ms": 5}),
        last=Outcome(AgentState.COMMITTED, "cd" * 32, 6, 2, None),
        installed={("vision/detector", 2): "cd" * 32},
    )
    path = tmp_path / "main.json"
    save_record(path, record)
    assert load_record(path, "main", list) == record


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"schema": 99, "slot": "main"}, "unknown state schema 99"),
        ({"schema": SCHEMA, "slot": "main", "state": "dancing"}, "corrupt state record"),
        ({"schema": 1, "slot": "main"}, "corrupt state record"),
    ],
)
def test_unknown_or_corrupt_record_is_an_install_error(
    tmp_path: Path, content: dict[str, Any], message: str
) -> None:
    path = tmp_path / "main.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InstallError, match=message) as err:
        load_record(path, "main", list)
    assert err.value.code == "install_failed"


def test_the_fixture_was_written_in_schema_1() -> None:
    record = json.loads((FIXTURE / "state" / "slots" / "main.json").read_text())
    assert record["schema"] == 1 and "installed" not in record
    versions = FIXTURE / "state" / "models" / "main" / "versions"
    manifest = parse_envelope(json.loads(next(versions.glob("*.json")).read_text()))
    assert manifest.signed["_type"] == "bundle-manifest"


def test_an_update_interrupted_under_the_schema_1_agent_is_finished_by_the_upgraded_one(
    old_device: tuple[Device, DeviceRepository],
) -> None:
    """The old agent was stopped mid-download (its record says ``downloading``, in schema 1);
    the upgraded agent's recovery resumes the download and commits."""
    device, repo = old_device
    v3 = repo.add_bundle(V3_FILES, version=3)
    repo.target({"main": v3})
    path = device.config.state_dir / "slots" / "main.json"
    record = json.loads(path.read_text())
    current = device.slot().current()
    assert current is not None
    record.update(state="downloading", update={  # the keys the schema-1 agent wrote
        "sequence": repo.sequence, "rollout_id": "rollout-1", "digest": v3.digest,
        "model": "vision/detector", "to_version": 3, "from_version": 2,
        "from_name": current.name, "to_name": version_name(v3.manifest, v3.digest),
        "manifest": v3.envelope, "timings": {}, "bytes_downloaded": 0,
        "started_ms": 1, "step_started_ms": 1,
    })  # fmt: skip
    path.write_text(json.dumps(record))
    device.agent.recover()
    device.agent.sender.flush()
    assert device.current_version() == 3 and repo.states()[-1] == "committed"
    assert json.loads(path.read_text())["schema"] == SCHEMA
