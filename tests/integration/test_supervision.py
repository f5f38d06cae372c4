"""`binbaton up` supervised both ways, and poison pills, as real processes: its children
die with it however it dies; it refuses a live broker; it stops when its broker dies; a
message that kills the worker is dead-lettered after --max-attempts deaths."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from binbaton.schemas.messages import Request
from binbaton.service.kafka.broker import answers_metadata, free_port
from binbaton.service.kafka.client import ResultFollower, produce, request_message
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig
from helpers.kafka import read_records
from helpers.processes import (
    alive,
    processes_mentioning,
    read_ready_line,
    up_command,
    up_env,
    wait_gone,
)

FAULTS = Path(__file__).parents[1] / "helpers" / "faults"  # sitecustomize: fault injection
GROUP_TIMINGS = ("--session-timeout-ms", "4000", "--heartbeat-interval-ms", "400")


def start_up(port: int, model: Path, stderr_path: Path, *extra: str,
             **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(up_command(port, *extra), stdout=subprocess.PIPE,
                            stderr=stderr_path.open("w"), text=True, env=up_env(model, **env))


def children_of_up(port: int) -> tuple[list[int], list[int]]:
    """(broker pids, worker pids) of the `up` on ``port``."""
    return (processes_mentioning(f"tcp://127.0.0.1:{port}"),
            processes_mentioning(f"--bootstrap-servers 127.0.0.1:{port}"))


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.mark.slow
def test_kill_9_of_up_leaves_no_process_behind(tiny_llama_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    process = start_up(port, tiny_llama_dir, tmp_path / "up.log")
    try:
        read_ready_line(process, timeout=120)
        brokers, workers = children_of_up(port)
        assert len(brokers) == 1 and len(workers) == 1, (brokers, workers)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert wait_gone(brokers + workers, timeout=10) == [], "a child outlived `up`"
    finally:
        stop(process)
    assert not answers_metadata("127.0.0.1", port)


@pytest.mark.slow
def test_up_exits_non_zero_within_seconds_when_its_broker_dies(
        tiny_llama_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    process = start_up(port, tiny_llama_dir, log)
    try:
        read_ready_line(process, timeout=120)
        (broker,), workers = children_of_up(port)
        killed = time.monotonic()
        subprocess.run(["kill", "-9", str(broker)], check=True)
        code = process.wait(timeout=20)
        took = time.monotonic() - killed
    finally:
        stop(process)
    assert code != 0
    assert took < 10, f"`up` took {took:.1f}s to notice"
    assert "binbaton up: the embedded broker exited" in log.read_text()
    assert wait_gone(workers, timeout=5) == []


@pytest.mark.slow
def test_up_refuses_a_live_broker_and_a_taken_port(
        broker: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    broker_port = int(broker.rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other_port = taken.getsockname()[1]
        for port, expected in [
            (broker_port, f"binbaton up: a Kafka broker already answers on 127.0.0.1:"
                          f"{broker_port} (another `binbaton up`?): stop it, or use it with "
                          f"--bootstrap-servers 127.0.0.1:{broker_port}"),
            (other_port, f"binbaton up: port {other_port} on 127.0.0.1 is taken"),
        ]:
            log = tmp_path / f"{port}.log"
            process = start_up(port, tiny_llama_dir, log)
            try:
                assert process.wait(timeout=60) == 1
            finally:
                stop(process)
            lines = log.read_text().strip().splitlines()
            assert lines and lines[-1].startswith(expected), lines
            assert "Traceback" not in log.read_text()
    assert answers_metadata("127.0.0.1", broker_port)  # the live broker is untouched


@pytest.mark.slow
def test_a_message_that_kills_the_worker_is_dead_lettered_as_poison_after_max_attempts(
        tiny_llama_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    log = tmp_path / "up.log"
    process = start_up(port, tiny_llama_dir, log, *GROUP_TIMINGS, "--max-attempts", "3",
                       PYTHONPATH=str(FAULTS), TEST_FAULT_WORKER_EXIT_ON="poison")
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    before = [Request(id=f"before-{i}", prompt=f"the quick brown fox {i}", max_tokens=6)
              for i in range(3)]
    after = [Request(id=f"after-{i}", prompt=f"jumps over the lazy dog {i}", max_tokens=6)
             for i in range(3)]
    poison = Request(id="poison-1", prompt="a message that kills its worker", max_tokens=6)

    async def exchange() -> dict:
        async with ResultFollower(kafka, "binbaton.results") as follower:
            await produce(kafka, "binbaton.requests", [request_message(r) for r in before])
            await follower.collect([r.id for r in before], timeout=60)
            await produce(kafka, "binbaton.requests",
                          [request_message(r) for r in [poison, *after]])
            return await follower.collect([r.id for r in [*before, poison, *after]],
                                          timeout=240)

    try:
        read_ready_line(process, timeout=120)
        results = asyncio.run(exchange())
        assert process.poll() is None, "`up` died"
        (worker,) = processes_mentioning(f"--bootstrap-servers {bootstrap}")
        assert alive([worker])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            stop(process)
    assert results["poison-1"].status == "error"
    assert results["poison-1"].error.code == "poison", results["poison-1"]
    assert all(results[r.id].status == "ok" for r in [*before, *after])
    restarts = log.read_text().count("binbaton up: worker-0 exited with code 3; restarting")
    assert restarts == 3, log.read_text()[-3000:]


@pytest.mark.slow
async def test_a_message_that_kills_the_classifier_is_dead_lettered_as_poison(
        broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path,
        tmp_path: Path) -> None:
    """`binbaton classifier` processes restarted after each death (as a supervisor would):
    the fourth dead-letters the message and routes the rest."""
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1)
    await create_topics(topics)
    kafka = KafkaConfig(bootstrap_servers=broker)
    fine = [Request(id=f"fine-{i}", prompt=f"hello {i}", max_tokens=4) for i in range(5)]
    poison = Request(id="poison-c", prompt="this one kills the classifier", max_tokens=4)
    await produce(kafka, topics.requests, [request_message(r) for r in [*fine[:2], poison,
                                                                          *fine[2:]]])
    command = [sys.executable, "-m", "binbaton.service.app.cli", "classifier",
               "--bootstrap-servers", broker, "--topic-prefix", unique_prefix, "--bins", "1",
               "--bin-edges", "", "--model", str(tiny_llama_dir), "--predictor", "max_tokens",
               "--state-dir", str(tmp_path), "--max-attempts", "3", "--tracing", "false",
               *GROUP_TIMINGS]
    env = dict(os.environ, PYTHONPATH=str(FAULTS), TEST_FAULT_CLASSIFIER_EXIT_ON="poison-c",
               OMP_NUM_THREADS="1")
    for death in range(3):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=(tmp_path / f"run{death}.log").open("w"))
        try:
            assert await asyncio.to_thread(process.wait, 90) == 3, f"run {death}"
        finally:
            stop(process)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "run3.log").open("w"))
    try:
        async with ResultFollower(kafka, topics.results) as follower:
            results = await follower.collect(["poison-c"], timeout=90)
        routed = await read_records(broker, topics.bin(0), topics.bin_partitions,
                                    lambda records: {r.key for r in records} >= {
                                        r.id.encode() for r in fine}, 30)
        assert process.poll() is None, (tmp_path / "run3.log").read_text()[-2000:]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            stop(process)
    assert results["poison-c"].error is not None
    assert results["poison-c"].error.code == "poison"
    assert {r.key for r in routed} == {r.id.encode() for r in fine}  # never the poison
