"""The local pod's process records and its platform fallback, without the engine."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from goodput.dev import local_pod
from goodput.dev.local_pod import LocalPod, PodProcess, PodUnavailable, group_members
from goodput.dev.pod_cli import PodBesideCluster


def _record(process: subprocess.Popen[bytes], ticks: int | None = None) -> PodProcess:
    actual = local_pod._start_ticks(process.pid)
    return PodProcess("x", process.pid, actual if ticks is None else ticks, ("sleep",), "f")


def test_a_record_is_alive_only_for_the_process_it_names() -> None:
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert _record(process).alive()
        # Same pid, another start time: a recycled pid is not our process.
        assert not _record(process, ticks=_record(process).start_ticks - 1).alive()
        assert group_members(process.pid) == [process.pid]
    finally:
        process.kill()
        process.wait()
    assert not _record(process, ticks=0).alive()
    assert group_members(process.pid) == []


def test_down_stops_what_a_dead_leader_left_in_its_group(tmp_path: Path) -> None:
    # Like an engine core whose API server died: the leader exits, its child runs on.
    pod = LocalPod("p", root=tmp_path)
    pod.state_dir.mkdir(parents=True)
    pod._spawn("engine", ["sh", "-c", "sleep 60 & sleep 0.2"], os.environ, "f")
    record = pod.process("engine")
    assert record is not None
    deadline = time.monotonic() + 10
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not record.alive() and len(group_members(record.pid)) == 1
    assert pod.down() == ["engine"]
    assert group_members(record.pid) == [] and pod.process("engine") is None


def test_unreadable_or_missing_pidfiles_mean_not_running(tmp_path: Path) -> None:
    pod = LocalPod("p", root=tmp_path)
    assert pod.process("engine") is None
    assert pod.down() == [] and not pod.state_dir.exists()
    (pod.state_dir / "run").mkdir(parents=True)
    (pod.state_dir / "run" / "engine.pid").write_text("{not json")
    assert pod.process("engine") is None
    assert not pod.status().running
    assert pod.down() == []


def test_no_engine_on_this_platform_is_reported_not_fatal_beside_the_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(local_pod, "platform_problem", lambda: "this is not x86_64")
    with pytest.raises(PodUnavailable, match="not x86_64"):
        LocalPod("p", root=tmp_path).up()
    monkeypatch.setenv("GOODPUT_CACHE_DIR", str(tmp_path))
    beside = PodBesideCluster("p")
    beside.start()
    assert beside.finish() is True
    assert "no local serving pod" in capsys.readouterr().err
