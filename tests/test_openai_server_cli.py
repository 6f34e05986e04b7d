"""The standalone test server tells when it is ready (`--ready-file`), and `--wait URL` blocks until a server
answers GET /models: the docs' demos start a server and wait for it instead of sleeping and hoping."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

SERVER = [sys.executable, "-m", "perception_r1.testing.openai_server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ready_file_then_wait_then_clean_stop(tmp_path: Path) -> None:
    ready = tmp_path / "server.ready"
    port = free_port()
    proc = subprocess.Popen([*SERVER, "--port", str(port), "--model", "demo", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        waited = subprocess.run([*SERVER, "--wait", f"http://127.0.0.1:{port}/v1", "--timeout", "120"],
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        assert ready.read_text().strip() == f"http://127.0.0.1:{port}/v1"  # written once it listens
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["demo"]
    finally:
        proc.send_signal(signal.SIGTERM)  # what `kill $SERVER` sends
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert not ready.exists()  # a stopped server leaves no stale ready file


def test_wait_fails_clearly_when_nothing_answers() -> None:
    port = free_port()
    waited = subprocess.run([*SERVER, "--wait", f"http://127.0.0.1:{port}/v1", "--timeout", "1"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert waited.returncode == 1
    assert f"http://127.0.0.1:{port}/v1" in waited.stderr and "not ready" in waited.stderr
