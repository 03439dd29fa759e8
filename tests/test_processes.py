"""Children die with their parent, however it dies (posegraph.processes; issue 13).

A SIGKILLed (or OOM-killed) `posegraph up`, `posegraph job run --graph local` or `posegraph ui`
used to leave its stage servers and router running, holding their ports. Here each is killed
with SIGKILL once its children run, and every process it started must be gone soon after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from services import free_port


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> dict[int, str]:
    """pid → command line of everything below ``pid`` (children in other sessions included)."""
    tree, found, todo = _children_of(), {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            try:
                found[child] = (Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_children(proc: subprocess.Popen, *needles: str, timeout: float = 300) -> dict[int, str]:
    """The parent's descendants once one of them runs each of ``needles``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the parent exited with {proc.returncode}: {proc.stdout.read()[-2000:]}"
        found = descendants(proc.pid)
        if all(any(n in cmd for cmd in found.values()) for n in needles):
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {needles} under pid {proc.pid} after {timeout:.0f}s: {descendants(proc.pid)}")


def kill_and_check(proc: subprocess.Popen, children: dict[int, str], ports: list[int] = ()) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 30  # the reaper's grace period is 10 s; then SIGKILL
    while time.monotonic() < deadline and any(running(pid) for pid in children):
        time.sleep(0.2)
    left = {pid: cmd for pid, cmd in children.items() if running(pid)}
    for pid in left:  # do not leak them into the rest of the run
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphans outlived their SIGKILLed parent: {left}"
    for port in ports:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posegraph", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_sigkilled_parent_takes_its_grandchildren_along(tmp_path):
    """The launcher alone: a child that starts a grandchild of its own (as TorchServe's launcher
    starts Java) is stopped with all it started when its parent is SIGKILLed."""
    script = textwrap.dedent("""
        import sys, time
        from posegraph import processes
        for _ in range(2):
            processes.spawn(["sh", "-c", "sleep 300 & sleep 300"])
        print("ready", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while True:  # two shells, each with two sleeps: one in the background, one it waits for
        children = wait_for_children(proc, "sleep 300")
        if sum(cmd.startswith("sleep") for cmd in children.values()) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(cmd.startswith("sleep") for cmd in children.values()) == 4, children
    kill_and_check(proc, children)


def test_a_stopped_child_is_crossed_out_and_the_reaper_exits_with_its_parent(tmp_path):
    """A clean stop reaches the child's whole group; the reaper does not outlive a parent that
    exits normally, and kills nothing it was not given."""
    marker = tmp_path / "survivor"
    script = textwrap.dedent(f"""
        import subprocess
        from posegraph import processes
        child = processes.spawn(["sh", "-c", "sleep 300 & sleep 300"])
        print(processes._reaper.pid, flush=True)
        processes.stop(child)
        assert child.poll() is not None
        # Not posegraph's: a process the reaper never heard of, in a group of its own.
        subprocess.Popen(["sh", "-c", "sleep 3 && touch {marker}"], start_new_session=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reaper = int(result.stdout.split()[0])
    deadline = time.monotonic() + 15
    while running(reaper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(reaper), "the reaper outlived its parent"
    time.sleep(4)
    assert marker.exists(), "the reaper killed a process it did not own"


def test_sigkilled_up_leaves_no_stage_server_or_router(checkpoints):
    port = free_port()
    proc = start("up", "--checkpoints", str(checkpoints), "--port", str(port), "--runtime", "kserve")
    try:
        for line in proc.stdout:
            if "graph ready" in line:
                break
        children = wait_for_children(proc, "posegraph.graph.router", "posegraph.serving.kserve_model")
        assert sum("kserve_model" in cmd for cmd in children.values()) == 3, children
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).raise_for_status()
        kill_and_check(proc, children, ports=[port])
    finally:
        proc.kill()


def test_sigkilled_job_run_leaves_no_stage_server_or_router(checkpoints, tmp_path):
    from posegraph.media.samples import synthetic_clip_frames, write_clip

    video = write_clip(tmp_path / "long.mp4", synthetic_clip_frames(240))
    proc = start("job", "run", "--video", str(video), "--graph", "local", "--checkpoints", str(checkpoints),
                 "--results", f"sqlite:///{tmp_path / 'results.db'}", "--output", str(tmp_path / "out") + "/",
                 "--quiet")
    try:
        children = wait_for_children(proc, "posegraph.graph.router")
        assert sum("kserve_model" in cmd for cmd in children.values()) == 3, children
        kill_and_check(proc, children)
    finally:
        proc.kill()


def test_sigkilled_ui_leaves_no_embedded_graph(checkpoints, tmp_path):
    port = free_port()
    proc = start("ui", "--data", str(tmp_path / "ui"), "--port", str(port), "--checkpoints", str(checkpoints))
    try:
        for line in proc.stdout:
            if "posegraph UI: http" in line:
                break
        children = wait_for_children(proc, "posegraph.graph.router", "posegraph.serving.kserve_model")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code < 500
        kill_and_check(proc, children, ports=[port])
    finally:
        proc.kill()
