"""The compose stack's topology without containers: real processes on this machine.

nginx (round-robin, the compose stack's settings) in front of two `ferry server`
replicas that share one data directory and one PostgreSQL database, Mosquitto with
the example ACL and one login per replica, real agents and a simulated fleet, all
on free ports. `bench/soak_fleet.py` drives the same topology with kills.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ferry.cli.demo import AgentProcess, Operator, ServerProcess, SimulatorProcess, wait_until
from ferry.server.mqtt import mosquitto_hash
from tests.e2e._stack import example_broker
from tests.support.mosquitto import MosquittoBroker, free_port

REPLICAS = ("ferry@server-1", "ferry@server-2")
NGINX = "/usr/sbin/nginx"


def nginx_binary() -> str | None:
    return NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")


@dataclass
class Nginx:
    """nginx as the load balancer: `deploy/nginx/lb.conf`'s proxy settings, free port."""

    workdir: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        servers = "".join(f"    server 127.0.0.1:{p};\n" for p in self.upstreams)
        temp = self.workdir / "tmp"
        temp.mkdir(exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            f"worker_processes 1;\npid {self.workdir / 'nginx.pid'};\n"
            f"error_log {self.workdir / 'error.log'} warn;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "events { worker_connections 1024; }\nhttp {\n"
            f"  access_log {self.workdir / 'access.log'};\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
            f"  scgi_temp_path {temp}/scgi;\n"
            f"  upstream ferry_servers {{\n{servers}  }}\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n"
            "    client_max_body_size 0;\n    proxy_request_buffering off;\n"
            "    proxy_buffering off;\n    location / {\n"
            "      proxy_pass http://ferry_servers;\n"
            "      proxy_next_upstream error timeout http_502 http_503;\n"
            "      proxy_set_header Host $host;\n    }\n  }\n}\n"
        )
        self.process = subprocess.Popen(
            [nginx_binary() or NGINX, "-c", str(conf), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 20, f"nginx on {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Topology:
    root: Path
    database_url: str
    broker: MosquittoBroker = field(init=False)
    servers: list[ServerProcess] = field(init=False)
    lb: Nginx | None = None
    op: Operator | None = None
    agents: list[AgentProcess] = field(default_factory=list)
    sims: list[SimulatorProcess] = field(default_factory=list)
    blob_env: dict[str, str] = field(default_factory=dict)  # e.g. the S3 store's settings

    def __post_init__(self) -> None:
        self.broker = example_broker(self.root / "mosquitto")
        acl = self.broker.workdir / "acl"
        acl.write_text(
            acl.read_text()
            + "".join(f"\nuser {login}\ntopic readwrite ferry/v1/#\n" for login in REPLICAS)
        )
        with (self.broker.workdir / "operator.passwd").open("a") as handle:
            for login in REPLICAS:
                handle.write(f"{login}:{mosquitto_hash(self._password(login), os.urandom(12))}\n")
        data = self.root / "data"  # one data directory: blobs and keys, as the volume
        self.servers = [
            ServerProcess(
                data,
                log_name=f"{login.split('@')[1]}.log",
                env={
                    "FERRY_DATABASE_URL": self.database_url,
                    "FERRY_MQTT_URL": self.broker.url,
                    "FERRY_MQTT_USERNAME": login,
                    "FERRY_MQTT_PASSWORD": self._password(login),
                    "FERRY_MQTT_PASSWORD_FILE": str(self.broker.workdir / "passwd"),
                    "FERRY_MQTT_OPERATOR_PASSWORD_FILE": str(
                        self.broker.workdir / "operator.passwd"
                    ),
                    "FERRY_MQTT_PID_FILE": str(self.root / "mosquitto.pid"),
                    "FERRY_POLL_INTERVAL_S": "2",
                    "FERRY_ROLLOUT_TICK_S": "0.5",
                    **self.blob_env,
                },
            )
            for login in REPLICAS
        ]

    @staticmethod
    def _password(login: str) -> str:
        return f"pw-{login.split('@')[1]}"

    def start(self) -> Topology:
        self.start_broker()
        for server in self.servers:
            server.start()
        self.lb = Nginx(self.root / "nginx", [s.http_port for s in self.servers]).start()
        self.op = Operator(self.lb.url, self.servers[0].admin_token)
        return self

    def start_broker(self) -> None:
        self.broker.start()
        assert self.broker.process is not None
        (self.root / "mosquitto.pid").write_text(f"{self.broker.process.pid}\n")

    def add_agents(self, count: int, token: str) -> list[AgentProcess]:
        assert self.lb is not None
        for index in range(count):
            agent = AgentProcess(self.root / f"agent-{index}", f"edge-{index}", poll_interval_s=2.0)
            agent.enroll(self.lb.url, token)
            self.agents.append(agent.start())
        return self.agents

    def simulate(self, devices: int, token: str, prefix: str = "sim") -> SimulatorProcess:
        assert self.lb is not None
        sim = SimulatorProcess(
            self.root / f"sim-{prefix}",
            self.lb.url,
            token,
            devices,
            prefix=prefix,
            extra=["--poll-interval", "2"],
        ).start()
        self.sims.append(sim)
        return sim

    def server_view(self) -> dict[str, int | None]:
        """The installed version per device, as the server's device list says."""
        assert self.op is not None
        devices = self.op._call("GET", "/devices?limit=10000")
        return {
            d["id"]: next((s["installed_version"] for s in d["slots"] if s["slot"] == "main"), None)
            for d in devices
        }

    def stop(self) -> None:
        for sim in self.sims:
            if sim.process is not None:
                sim.stop()
        for agent in self.agents:
            agent.stop()
        if self.op is not None:
            self.op.close()
        if self.lb is not None:
            self.lb.stop()
        for server in self.servers:
            server.stop()
        self.broker.stop()
