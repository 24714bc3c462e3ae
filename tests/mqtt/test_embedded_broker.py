"""The embedded (amqtt) broker enforces the same logins and topic rules as the Mosquitto ACL."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest

from ferry.protocol import topics
from ferry.server.mqtt import EmbeddedBroker, mosquitto_hash, verify_mosquitto_hash
from tests.mqtt._clients import Peer
from tests.support.mosquitto import free_port, wait_for_port

SERVER = ("ferry-server", "server-password")
PASSWORDS = {"dev-a": "password-of-a", "dev-b": "password-of-b"}
HASHES = {device: mosquitto_hash(pw, os.urandom(12)) for device, pw in PASSWORDS.items()}


def _device_check(device_id: str, password: str) -> bool:
    stored = HASHES.get(device_id)
    return stored is not None and verify_mosquitto_hash(password, stored)


@pytest.fixture
def broker() -> Iterator[str]:
    """The broker on its own event loop in a thread, as inside the server's lifespan."""
    port = free_port()
    loop = asyncio.new_event_loop()
    embedded = EmbeddedBroker("127.0.0.1", port, server_username=SERVER[0],
                              server_password=SERVER[1], device_check=_device_check)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(embedded.start(), loop).result(10)
    wait_for_port(port)
    yield f"mqtt://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(embedded.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _peer(url: str, user: str, password: str) -> Peer:
    peer = Peer(url, user, password, client_id=f"{user}-{os.urandom(3).hex()}")
    assert peer.connect(), f"{user} could not log in"
    return peer


def test_logins_are_checked(broker: str) -> None:
    assert not Peer(broker).connect()
    assert not Peer(broker, "dev-a", "password-of-b").connect()
    assert not Peer(broker, "dev-x", "anything").connect()
    _peer(broker, "dev-a", PASSWORDS["dev-a"]).close()
    _peer(broker, *SERVER).close()


def test_a_device_reaches_only_its_own_topics(broker: str) -> None:
    server = _peer(broker, *SERVER)
    server.subscribe(topics.ALL_DEVICE_STATUS)
    a, b = _peer(broker, "dev-a", PASSWORDS["dev-a"]), _peer(broker, "dev-b", PASSWORDS["dev-b"])
    a.publish(topics.device_status("dev-b"), b"forged")
    b.publish(topics.device_status("dev-b"), b"genuine")
    assert server.wait_for(topics.device_status("dev-b"))
    assert server.received() == [b"genuine"]

    a.subscribe(topics.device_notice("dev-b"))
    a.subscribe(topics.device_notice("dev-a"))
    a.subscribe(topics.group_notice("all"))
    server.publish(topics.device_notice("dev-b"), b"for b", retain=True)
    server.publish(topics.device_notice("dev-a"), b"for a", retain=True)
    server.publish(topics.group_notice("all"), b"for all", retain=True)
    assert a.wait_for(topics.device_notice("dev-a")) and a.wait_for(topics.group_notice("all"))
    assert a.received(topics.device_notice("dev-b")) == []
    for peer in (a, b, server):
        peer.close()
