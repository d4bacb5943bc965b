"""``--engine-cmd``: the gateway starts an engine, notices it dying early, and stops it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from goodput.dev.processes import free_port
from goodput.serving.engine_process import EngineProcess


def test_an_engine_that_exits_early_is_reported() -> None:
    engine = EngineProcess(f"{sys.executable} -c 'raise SystemExit(3)'", "http://127.0.0.1:9")
    engine.start()
    with pytest.raises(RuntimeError, match="status 3"):
        engine.wait_ready(timeout_s=30)


def test_stop_interrupts_the_engine_like_ctrl_c(tmp_path: Path) -> None:
    # A stand-in that serves /health and, like `goodput dev engine start`, cleans up on Ctrl-C.
    port = free_port()
    script = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        f"s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n"
        "try:\n"
        "    s.serve_forever()\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(0)\n"
    )
    (tmp_path / "engine.py").write_text(script)
    engine = EngineProcess(f"{sys.executable} {tmp_path / 'engine.py'}", f"http://127.0.0.1:{port}")
    engine.start()
    engine.wait_ready(timeout_s=30)
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 10  # the interrupt was enough: no SIGTERM wait
    assert engine._process is not None and engine._process.returncode == 0
