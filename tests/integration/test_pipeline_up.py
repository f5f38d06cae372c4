"""`binbaton up` as a real process: the ready line, requests served, a killed worker
restarted, clean SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from binbaton.schemas.messages import Request
from binbaton.service.kafka.broker import answers_metadata, free_port
from binbaton.service.kafka.client import ResultFollower, produce, request_message
from binbaton.service.kafka.config import KafkaConfig
from helpers.processes import processes_mentioning, read_ready_line


@pytest.mark.slow
def test_up_serves_restarts_a_dead_worker_and_stops_on_sigint(tiny_llama_dir: Path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    env = dict(os.environ, BINBATON_BIN_EDGES="4,8", BINBATON_WORKERS="1",
               BINBATON_MODEL=str(tiny_llama_dir), BINBATON_PREDICTOR="max_tokens",
               OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "binbaton.service.app.cli", "up", "--broker-port", str(port),
         "--kernel-backend", "torch", "--drain-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        lines = read_ready_line(process, timeout=120)
        assert lines == [f"ready bootstrap={bootstrap}"]
        assert processes_mentioning(f"--bootstrap-servers {bootstrap}"), "no worker process"

        async def one_request(request_id: str) -> str:
            kafka = KafkaConfig(bootstrap_servers=bootstrap)
            request = Request(id=request_id, prompt="the quick brown fox", max_tokens=6)
            async with ResultFollower(kafka, "binbaton.results") as follower:
                await produce(kafka, "binbaton.requests", [request_message(request)])
                results = await follower.collect([request_id], timeout=90)
            assert results[request_id].bin == 1 and len(results[request_id].token_ids) == 6
            return results[request_id].status

        assert asyncio.run(one_request("up-1")) == "ok"
        # A worker that dies is restarted, and the service keeps serving.
        (worker,) = processes_mentioning(f"--bootstrap-servers {bootstrap}")
        os.kill(worker, signal.SIGKILL)
        assert asyncio.run(one_request("up-2")) == "ok"
        assert processes_mentioning(f"--bootstrap-servers {bootstrap}") not in ([], [worker])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert (process.stdout.read() or "").strip() == ""  # the ready line only, once
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not answers_metadata("127.0.0.1", port), "the broker outlived `up`"
    deadline = time.monotonic() + 10
    while processes_mentioning(f"--bootstrap-servers {bootstrap}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(f"--bootstrap-servers {bootstrap}"), "a worker outlived `up`"
