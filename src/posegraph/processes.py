"""posegraph's one launcher of child processes (stage servers, graph routers, UI job runners).

Every child starts in a session (process group) of its own, so a stop reaches what the child
started too (TorchServe's launcher → Java → Python workers). And none outlives posegraph, however
posegraph dies: the first child also starts a *reaper*, a small Python process in its own
session that reads a pipe from posegraph. Each child's group is written into that pipe when it
starts and crossed out when it is stopped. When the pipe closes — posegraph exited, crashed, was
SIGKILLed or OOM-killed: the kernel closes its end in every case — the reaper stops every group
still listed (SIGTERM, then SIGKILL after a grace period) and exits. Without it, a SIGKILLed
``posegraph up`` left three stage servers and a router holding their ports (seen; issue 13).

A parent-death signal (prctl PR_SET_PDEATHSIG) would reach only the direct child, not Java's
workers, and it fires when the spawning *thread* exits; the pipe has neither gap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

# Seconds between SIGTERM and SIGKILL, for a stop and for the reaper. A KServe stage server
# needs about 1 s to close; TorchServe's Java frontend up to 5 s (measured on 2 cores).
GRACE_S = 10.0

_REAPER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, pgid = line[0], int(line[1:])
    (groups.add if op == "+" else groups.discard)(pgid)
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
for sig, wait in ((signal.SIGTERM, float(sys.argv[1])), (signal.SIGKILL, 0)):
    for g in list(groups):
        try:
            os.killpg(g, sig)
        except OSError:
            groups.discard(g)
    deadline = time.monotonic() + wait
    while groups and time.monotonic() < deadline:
        groups = {g for g in groups if alive(g)}
        time.sleep(0.1)
"""

_lock = threading.Lock()
_reaper: subprocess.Popen | None = None


def _tell_reaper(op: str, pgid: int) -> None:
    global _reaper
    with _lock:
        if _reaper is None or _reaper.poll() is not None:
            _reaper = subprocess.Popen([sys.executable, "-I", "-c", _REAPER, str(GRACE_S)], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        try:
            _reaper.stdin.write(f"{op}{pgid}\n".encode())
            _reaper.stdin.flush()
        except BrokenPipeError:  # the reaper was killed: the next spawn starts another
            _reaper = None


def spawn(cmd: list[str], *, log: Path | None = None, append: bool = False, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, its output in ``log`` (or discarded), with the
    environment ``env`` (default: this process's); it dies with posegraph however posegraph dies."""
    out = open(log, "ab" if append else "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it open
    try:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env=env, start_new_session=True)
    finally:
        if log:
            out.close()
    _tell_reaper("+", process.pid)
    return process


def stop(processes: subprocess.Popen | Iterable[subprocess.Popen], *, sig: int = signal.SIGTERM,
         grace_s: float = GRACE_S) -> None:
    """Stop children and what they started: ``sig`` to each group at once, SIGKILL to those
    still there after ``grace_s`` (one grace period for all of them, not one each)."""
    group = [processes] if isinstance(processes, subprocess.Popen) else list(processes)
    for process in group:
        if process.poll() is None:
            _signal_group(process, sig)
    deadline = time.monotonic() + grace_s
    for process in group:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=10)
        # What the child started may outlive it (TorchServe's Java): the group goes too.
        _signal_group(process, signal.SIGKILL)
        _tell_reaper("-", process.pid)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_on_sigterm() -> None:
    """SIGTERM (systemd, `timeout`, kubectl, a UI stopping its runner) unwinds like Ctrl-C's exit:
    ``finally`` blocks run and children are stopped, with exit status 143 (128 + 15)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
