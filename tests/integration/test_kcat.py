"""README's kcat lines, run as written against the embedded broker (only the address, the
topic prefix and the scratch folder differ). Skipped where kcat or confluent-kafka (whose
librdkafka kcat loads) is not installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import encode
from binbaton.schemas.messages import Result
from binbaton.service.kafka.topics import TopicsConfig
from helpers.kafka import read_records

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_kcat_lines() -> str:
    """The sh block of README's kcat paragraph."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)
    kcat = [block for block in blocks if "kcat -P" in block and "LD_LIBRARY_PATH" in block]
    assert len(kcat) == 1, "README has no (or several) kcat blocks"
    return kcat[0]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed "
                    "(Debian/Ubuntu: apt-get install kcat)")
async def test_readme_kcat_lines_produce_and_read(broker: str, unique_prefix: str,
                                                  create_topics, tmp_path: Path) -> None:
    pytest.importorskip("confluent_kafka", reason="kcat loads confluent-kafka's librdkafka")
    await create_topics(TopicsConfig(prefix=unique_prefix, num_bins=1))
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:  # a result for `kcat -C` to find
        await producer.send_and_wait(f"{unique_prefix}.results",
                                     encode(Result(id="k0", status="ok", text="from kafka")),
                                     key=b"k0")
    finally:
        await producer.stop()
    script = (readme_kcat_lines()
              .replace("127.0.0.1:9092", broker)
              .replace("binbaton.requests", f"{unique_prefix}.requests")
              .replace("binbaton.results", f"{unique_prefix}.results")
              .replace("/tmp/binbaton-rdkafka", str(tmp_path / "rdkafka")))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"librdkafka 2\.\d+", done.stdout), done.stdout
    assert '"id":"k0"' in done.stdout and "from kafka" in done.stdout, done.stdout

    records = await read_records(broker, f"{unique_prefix}.requests", 2,
                                 lambda found: len(found) >= 1, timeout=10)
    assert [(r.key, r.value) for r in records] == [
        (b"k1", b'{"id":"k1","prompt":"Hi","max_tokens":8}')]
