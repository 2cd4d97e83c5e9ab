"""`medgan auth-proxy` puts a login in front of endpoints that have none (Flower's /metrics, medgan's /metrics)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import free_port, stop_process


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = f"upstream saw {self.path} auth={self.headers.get('Authorization')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b"posted " + data)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    env = dict(os.environ, FLOWER_USER="ops", FLOWER_PASSWORD="s3cret")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "auth-proxy", "--route",
                             f"{port}=http://127.0.0.1:{upstream.server_address[1]}", "--address", "127.0.0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)
    upstream.shutdown()


def test_every_path_needs_the_login(proxy):
    for path in ("/metrics", "/healthcheck", "/api/workers", "/"):
        r = httpx.get(proxy + path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert httpx.get(proxy + path, auth=("ops", "wrong")).status_code == 401
        assert httpx.get(proxy + path, auth=("nobody", "s3cret")).status_code == 401


def test_with_the_login_it_forwards_without_leaking_it(proxy):
    r = httpx.get(proxy + "/metrics?x=1", auth=("ops", "s3cret"))
    assert r.status_code == 200 and r.headers["X-Upstream"] == "yes"
    assert r.text == "upstream saw /metrics?x=1 auth=None"  # the proxy's login is not passed on
    p = httpx.post(proxy + "/api/task/apply/x", content=b"payload", auth=("ops", "s3cret"))
    assert p.status_code == 201 and p.text == "posted payload"


def test_refuses_to_start_without_a_password():
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWER_USER", "FLOWER_PASSWORD")}
    r = subprocess.run([sys.executable, "-m", "cli", "auth-proxy", "--route", "9=http://x:1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "never serves without a login" in r.stderr
