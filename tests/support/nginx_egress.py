"""nginx running `deploy/nginx/egress.conf` on a free port, for tests and benches.

Only ``listen``, the upstream ``server`` and the ``alias`` of the shipped file are
rewritten; the rest (the ``internal`` location, the headers it passes on) is
what production runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx" / "egress.conf"


def egress_conf(workdir: Path, port: int, upstream: int, blob_dir: Path) -> Path:
    shipped = CONF.read_text()
    site, count = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", shipped)
    site, ups = re.subn(r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{upstream};", site)
    site, aliases = re.subn(r"alias [^;]+;", f"alias {blob_dir}/;", site)
    assert count == ups == aliases == 1, "egress.conf changed shape: update this helper"
    temp = workdir / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 256; }\nhttp {\n"
        f"  access_log {workdir / 'access.log'};\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
        f"  scgi_temp_path {temp}/scgi;\n{site}\n}}\n"
    )
    return conf


def start_nginx(binary: str, conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([binary, "-c", str(conf), "-g", "daemon off;"])


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGQUIT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
