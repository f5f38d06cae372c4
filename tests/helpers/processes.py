"""Processes seen from outside: by command line, and ``binbaton up``'s ready line."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (workers name the broker's port)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def read_ready_line(process: subprocess.Popen[str], timeout: float) -> list[str]:
    """stdout lines up to and including the ready line (read in a thread: no busy loop)."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
            if line.startswith("ready "):
                return
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if line.startswith("ready "):
            return seen
    raise AssertionError(f"no ready line within {timeout}s (exit {process.poll()}): {seen}")


def alive(pids: list[int]) -> list[int]:
    """The pids of ``pids`` that still run (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; returns those still running at the timeout."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def up_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "binbaton.service.app.cli", "up", "--broker-port", str(port),
            "--kernel-backend", "torch", *extra]


def up_env(model: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, BINBATON_BIN_EDGES="4,8", BINBATON_WORKERS="1",
                BINBATON_MODEL=str(model), BINBATON_PREDICTOR="max_tokens",
                OMP_NUM_THREADS="1", **extra)
