"""The fleet simulator's device runs the protocol's checks: one device against the repository
simulator (no server), through root and director rotations and a forged directive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ferry.cli.simulate import Fleet, SimConfig
from ferry.protocol.keys import SigningKey
from tests.support.device_repository import DeviceRepository

DEVICE = "sim-00000"


@pytest.fixture
def repo() -> Iterator[DeviceRepository]:
    simulator = DeviceRepository(device_id=DEVICE).start()
    yield simulator
    simulator.close()


async def _enroll_rotate_sync(repo: DeviceRepository) -> Fleet:
    fleet = Fleet(
        SimConfig(
            server=repo.url,
            enrollment_token=repo.enrollment_token,
            devices=1,
            mqtt=False,
            step_delay_s=0,
            verify_sample=1.0,
        )
    )
    device = fleet.devices[0]
    try:
        await device.enroll()
        auth = repo.authority
        for version in (2, 3):  # two root rotations, then a new director key with the second
            old_root, auth.root, auth.keyring_version = auth.root, SigningKey.generate(), version
            if version == 3:
                auth.director = SigningKey.generate()
            repo.publish_keyring(auth.signed_keyring(signers=[old_root, auth.root]), version)
        repo.target({"main": repo.add_bundle({"model.onnx": b"\x01" * 1000}, version=1)})
        await device.sync()
        repo.target(
            {"main": repo.add_bundle({"model.onnx": b"\x02" * 1000}, version=2)},
            signer=SigningKey.generate(),
        )
        await device.sync()
    finally:
        await fleet.http.aclose()
    return fleet


def test_simulated_device_walks_rotations_installs_and_refuses_a_stranger(
    repo: DeviceRepository,
) -> None:
    fleet = asyncio.run(_enroll_rotate_sync(repo))
    assert fleet.stats.versions == {DEVICE: 1}
    assert fleet.stats.refusals == {"untrusted_key": 1}
    assert fleet.devices[0].trust is not None and fleet.devices[0].trust.keyring.version == 3
    assert any(path.endswith("/keyring/2") for _, path, _ in repo.requests)


def test_mqtt_connections_start_from_the_configured_source_address() -> None:
    """Past ~28,000 connections one loopback address runs out of ephemeral ports: the
    simulator spreads devices over several (127.0.0.2 here)."""
    import socket

    from ferry.cli.simulate import LoopMqtt

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    async def connect() -> None:
        client = LoopMqtt(
            f"mqtt://127.0.0.1:{port}", "sim-1", "u", "p", [], lambda _: None, "127.0.0.2"
        )
        stop = asyncio.Event()
        runner = asyncio.ensure_future(client.run(stop))
        peer = await asyncio.get_running_loop().run_in_executor(None, listener.accept)
        peer[0].close()
        stop.set()
        await asyncio.wait_for(runner, 15)
        assert peer[1][0] == "127.0.0.2"

    try:
        asyncio.run(connect())
    finally:
        listener.close()
