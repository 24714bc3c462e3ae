"""Write a state directory with the agent as of commit 963b750 (schema-1 records).

Run once with that commit checked out: python generate.py <out>; see README.md.
"""

import json
import shutil
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from tests.agent.conftest import Device, write_config
from tests.support.device_repository import DeviceRepository
from tests.support.trust import Authority

out = Path(sys.argv[1])
auth = Authority()
repo = DeviceRepository(auth).start()
repo.keyrings[1] = auth.signed_keyring(expires_in=timedelta(days=365 * 80))
try:
    folder = Path("/tmp/trustgen/dev")
    shutil.rmtree(folder, ignore_errors=True)
    device = Device(folder, repo, write_config(folder, device_id=repo.device_id))
    device.enroll()
    v1 = repo.add_bundle({"model.onnx": b"v1-weights" * 10, "labels.txt": b"cat\n"}, version=1)
    repo.target({"main": v1}, expires_in=timedelta(days=365 * 80))
    device.sync()
    v2_files = {"model.onnx": b"v2-weights" * 10, "labels.txt": b"cat\ndog\n"}
    v2 = repo.add_bundle(v2_files, version=2)
    repo.target({"main": v2}, expires_in=timedelta(days=365 * 80))
    device.sync()
    assert device.current_version() == 2, repo.states()
    device.close()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder / "state", out / "state", symlinks=True)
    shutil.rmtree(out / "state" / "reports", ignore_errors=True)
    (out / "state" / "agent.lock").unlink(missing_ok=True)
    keys = {name: getattr(auth, name).to_pem().decode() for name in ("root", "bundles", "director")}
    facts = {"keys": keys, "credential": repo.credential, "device_id": repo.device_id,
             "sequence": repo.sequence}  # fmt: skip
    (out / "authority.json").write_text(json.dumps(facts, indent=1) + "\n")
finally:
    repo.close()
