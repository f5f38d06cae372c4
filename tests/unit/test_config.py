"""Flags, BINBATON_* variables and the validated configs."""

from __future__ import annotations

import argparse

import pytest
from binbaton.schemas.settings import ConfigError
from binbaton.service.app.cli import command_flags
from binbaton.service.app.commands import SUMMARIES
from binbaton.service.app.configs import classifier_config, topics_config
from binbaton.service.app.flags import Flag, add_flags, resolve
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig

UP = command_flags("up")
FLAGS = {flag.name: flag for name in SUMMARIES.keys() - {"bench", "train-predictor"}
         for flag in command_flags(name)}


def named(*names: str) -> list[Flag]:
    return [flag for flag in UP if flag.name in names]


def parse(argv: list[str], flags: list[Flag]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, flags)
    return parser.parse_args(argv)


def test_command_line_wins_over_environment_over_default() -> None:
    names = named("bootstrap-servers", "topic-prefix", "bins")
    env = {"BINBATON_BOOTSTRAP_SERVERS": "env:1", "BINBATON_TOPIC_PREFIX": "envp"}
    values = resolve(parse(["--topic-prefix", "cli"], names), names, env)
    assert values == {"bootstrap_servers": "env:1", "topic_prefix": "cli", "bins": 3}


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\$BINBATON_BINS='zero'"):
        resolve(parse([], named("bins")), named("bins"), {"BINBATON_BINS": "zero"})
    with pytest.raises(ConfigError, match=r"\$BINBATON_BROKER_PORT='0': must be a TCP port"):
        resolve(parse([], named("broker-port")), named("broker-port"),
                {"BINBATON_BROKER_PORT": "0"})


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--bin-edges='64,x'"):
        resolve(parse(["--bin-edges", "64,x"], named("bin-edges")), named("bin-edges"), {})


def test_every_flag_has_its_variable() -> None:
    assert FLAGS["bootstrap-servers"].env == "BINBATON_BOOTSTRAP_SERVERS"
    assert all(f.env == "BINBATON_" + f.dest.upper() for f in FLAGS.values())


def test_kafka_config_never_enables_idempotence() -> None:
    kafka = KafkaConfig("127.0.0.1:1234")
    assert kafka.producer_kwargs()["enable_idempotence"] is False
    assert "transactional_id" not in kafka.producer_kwargs()
    assert kafka.consumer_kwargs("g")["enable_auto_commit"] is False
    with pytest.raises(ConfigError, match="HOST:PORT"):
        KafkaConfig("nohostport")


def test_topic_names_follow_the_prefix() -> None:
    topics = TopicsConfig(prefix="x", num_bins=2)
    assert topics.bins == ("x.bin.0", "x.bin.1")
    assert (topics.requests, topics.results, topics.dlq, topics.traces) == (
        "x.requests", "x.results", "x.dlq", "x.traces")
    assert topics.worker_group(1) == "x.worker.bin-1"
    with pytest.raises(ConfigError):
        topics.bin(2)
    with pytest.raises(ConfigError):
        TopicsConfig(prefix="bad prefix")


def test_edges_decide_bin_count_and_must_agree() -> None:
    values = resolve({"bin_edges": (10, 20, 30), "bins": None, "model": "m"}, UP, {})
    assert topics_config(values).num_bins == 4
    assert classifier_config(values).num_bins == 4
    with pytest.raises(ConfigError, match="disagrees"):
        topics_config(resolve({"bin_edges": (10,), "bins": 4}, UP, {}))


def test_default_edges_are_equal_mass_over_the_trace() -> None:
    config = classifier_config(resolve({"bins": 3, "model": "m"}, UP, {}))
    assert len(config.bin_edges) == 2 and config.bin_edges[0] < config.bin_edges[1]


def test_classifier_config_validates() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        ClassifierConfig(model="m", bin_edges=(5, 5))
    with pytest.raises(ConfigError, match="--model"):
        ClassifierConfig(model="", bin_edges=())
