"""Flags generated from config fields: names, defaults, bool flags, the engine's own config."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest
from binbaton.schemas.settings import ConfigError, positive_int, setting
from binbaton.service.app.cli import command_flags
from binbaton.service.app.flags import Section, Values, add_flags, resolve, to_argv
from binbaton.service.app.sections import ENGINE, ENGINE_SETTINGS, KAFKA
from binbaton.workers.engine.config import EngineConfig


@dataclass(frozen=True)
class Example:
    size: int = field(default=4, metadata=setting("how many", parse=positive_int))
    fast: bool = field(default=False, metadata=setting("go fast"))
    name: str = field(default="x", metadata=setting("its name", flag="label"))
    hidden: int = 7  # no setting: no flag


EXAMPLE = Section(Example)


def parse(argv: list[str], section: Section[Example] = EXAMPLE) -> Values:
    parser = argparse.ArgumentParser()
    add_flags(parser, section.flags())
    return resolve(parser.parse_args(argv), section.flags(), environ={})


def test_a_field_with_a_setting_is_a_flag_named_after_it_with_its_default() -> None:
    flags = {flag.name: flag for flag in EXAMPLE.flags()}
    assert set(flags) == {"size", "fast", "label"}
    assert flags["size"].default == 4 and flags["size"].env == "BINBATON_SIZE"
    assert flags["label"].field == "name" and flags["label"].env == "BINBATON_LABEL"
    assert EXAMPLE.build(parse([])) == Example()


def test_a_bool_field_takes_the_flag_its_negation_or_a_value() -> None:
    assert parse(["--fast"])["fast"] is True
    assert parse(["--no-fast"])["fast"] is False
    assert parse(["--fast", "false"])["fast"] is False
    assert resolve({}, EXAMPLE.flags(), environ={"BINBATON_FAST": "yes"})["fast"] is True
    assert to_argv(parse(["--no-fast"]), EXAMPLE.flags()) == [
        "--size", "4", "--fast", "false", "--label", "x"]
    with pytest.raises(ConfigError, match="--fast='maybe'"):
        parse(["--fast", "maybe"])


def test_given_tells_a_set_value_from_a_default() -> None:
    values = resolve({"label": "y"}, EXAMPLE.flags(), environ={"BINBATON_SIZE": "2"})
    assert values.given == {"label", "size"}
    assert values.with_(fast=True).given == {"label", "size", "fast"}


def test_every_engine_field_is_a_flag_and_a_new_one_becomes_one() -> None:
    names = {flag.field for flag in ENGINE.flags()}
    assert names == {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(ENGINE_SETTINGS) <= names  # no help text for a field that is gone

    @dataclass(frozen=True)
    class Grown(EngineConfig):
        cuda_graphs: bool = False

    (flag,) = [f for f in dataclasses.replace(ENGINE, config=Grown).flags()
               if f.field == "cuda_graphs"]
    assert flag.name == "cuda-graphs" and flag.boolean and flag.default is False


def test_the_worker_reads_the_kafka_timings_it_needs() -> None:
    names = {flag.name for flag in command_flags("worker")}
    assert {"session-timeout-ms", "heartbeat-interval-ms", "commit-interval", "bins"} <= names
    values = resolve({"session_timeout_ms": "4000", "heartbeat_interval_ms": "400"},
                     KAFKA.flags(), environ={})
    kafka = KAFKA.build(values)
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (4000, 400)


def test_a_required_field_left_unset_names_its_flag_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"--model is required \(or \$BINBATON_MODEL\)"):
        ENGINE.build(resolve({}, ENGINE.flags(), environ={}))


def test_unchanged_flag_names_and_defaults_of_the_contract() -> None:
    up = {flag.name: flag.default for flag in command_flags("up")}
    assert up["broker-port"] == 9092 and up["topic-prefix"] == "binbaton"
    assert up["bins"] == 3 and up["partitions"] == 2 and up["predictor"] == "auto"
    assert up["device"] == "auto" and up["dtype"] == "auto" and up["policy"] == "multibin-insert"
    assert up["batch-size"] == 64 and up["max-tokens-limit"] == 4096
    assert up["predictor-learning-rate"] == 0.1 and up["drain-timeout"] == 30.0
    assert up["tracing"] is True and up["metrics-port"] == 0 and up["log-level"] == "WARNING"


def test_a_configs_own_check_names_the_flag_and_variable_of_the_field() -> None:
    values = resolve({"model": "m", "dtype": "float32", "bin_max_batch": "4,0"}, ENGINE.flags(),
                     environ={})
    with pytest.raises(ConfigError) as raised:
        ENGINE.build(values)
    assert str(raised.value).startswith(
        "--bin-max-batch ($BINBATON_BIN_MAX_BATCH): bin_max_batch entries must be >= 1")
    values = resolve({"model": "m", "dtype": "float32"}, ENGINE.flags(),
                     environ={"BINBATON_KV_MEMORY_FRACTION": "2"})
    with pytest.raises(ConfigError, match=r"^--kv-memory-fraction \(\$BINBATON_KV_MEMORY_F"):
        ENGINE.build(values)
