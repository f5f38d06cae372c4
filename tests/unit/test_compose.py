"""docker-compose.yml checked without a Docker engine: the Compose spec, the app's own
configuration (every BINBATON_* variable a service sets is a flag the app reads, and its
value parses), topic names, Jaeger's config, GPU reservations and the Dockerfiles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from binbaton.service.app.cli import command_flags
from binbaton.service.app.commands import SUMMARIES
from binbaton.service.app.flags import Flag, resolve
from binbaton.service.kafka.topics import TopicsConfig
from helpers.data import needs_data

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
JAEGER = ROOT / "docker" / "jaeger.yaml"
# CI has the shared folder beside the clone: <repo>/../shared.
COMPOSE_SPEC = ROOT.parent / "shared" / "data" / "compose-spec.json"

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
WORKER_COMMAND = ["worker"]
COMMANDS = SUMMARIES.keys() - {"bench", "train-predictor"}  # the ones with BINBATON_ flags


def interpolate(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default (no env given)."""

    def default(match: re.Match[str]) -> str:
        if match.group(2) is None:
            raise AssertionError(f"{value!r}: ${{{match.group(1)}}} has no default")
        return match.group(2)

    return INTERPOLATION.sub(default, str(value))


def jaeger_env(value: str) -> str:
    """The default of a collector ``${env:VAR:-default}`` reference."""
    match = re.fullmatch(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*:-(.*)\}", value)
    return match.group(1) if match else value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(value) for name, value in env.items()}


def app_env_names() -> set[str]:
    """Every BINBATON_* variable the app reads: the flags of every command."""
    return {flag.env for command in COMMANDS for flag in command_flags(command)}


def flags_of_service(service: dict[str, Any]) -> dict[str, Flag]:
    """The flags of the `binbaton` command a service runs, by variable (none: not ours)."""
    command = service.get("command")
    if not command or command[0] not in COMMANDS:
        return {}
    return {flag.env: flag for flag in command_flags(command[0])}


@needs_data(COMPOSE_SPEC)
def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SPEC.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_every_binbaton_variable_is_read_by_the_app(services: dict[str, Any]) -> None:
    known = app_env_names()
    unknown = {
        (name, variable)
        for name, service in services.items()
        for variable in environment(service)
        if variable.startswith("BINBATON_") and variable not in known
    }
    assert not unknown, (
        f"services set BINBATON_* variables no command reads: {sorted(unknown)}"
        f"; it reads {sorted(known)}")


def test_every_binbaton_value_parses_as_its_flag(services: dict[str, Any]) -> None:
    failures = []
    for name, service in services.items():
        by_env = flags_of_service(service)
        for variable, value in environment(service).items():
            if variable not in by_env:
                continue
            try:
                resolve({}, [by_env[variable]], environ={variable: value})
            except ValueError as exc:
                failures.append(f"{name}: {variable}={value!r}: {exc}")
    assert not failures, "\n".join(failures)


def test_every_binbaton_variable_is_read_by_the_command_the_service_runs(
    services: dict[str, Any],
) -> None:
    """Stricter than "the app reads it": the service's own command has that flag (a
    worker's BINBATON_METRICS_PORT must reach the worker, not only the classifier)."""
    failures = []
    for name, service in services.items():
        command = service.get("command")
        if not command or command[0] not in COMMANDS:
            continue
        read = flags_of_service(service).keys()
        failures += [f"{name} ({command[0]}): {variable}" for variable in environment(service)
                     if variable.startswith("BINBATON_") and variable not in read]
    assert not failures, f"variables the service's command does not read: {failures}"


def test_topic_names_match_the_code(services: dict[str, Any]) -> None:
    prefixes = {environment(s)["BINBATON_TOPIC_PREFIX"] for s in services.values()
                if "BINBATON_TOPIC_PREFIX" in environment(s)}
    assert prefixes == {TopicsConfig().prefix}  # one prefix, the code's default
    topics = TopicsConfig(prefix=prefixes.pop())
    assert topics.traces == "binbaton.traces"  # README's traces topic
    assert environment(services["jaeger"])["TRACES_TOPIC"] == topics.traces

    jaeger = yaml.safe_load(JAEGER.read_text())
    receiver = jaeger["receivers"]["kafka"]
    assert [jaeger_env(t) for t in receiver["traces"]["topics"]] == [topics.traces]


def test_jaeger_reads_otlp_proto_from_kafka_and_accepts_otlp(services: dict[str, Any]) -> None:
    jaeger = yaml.safe_load(JAEGER.read_text())
    pipeline = jaeger["service"]["pipelines"]["traces"]
    assert set(pipeline["receivers"]) == {"kafka", "otlp"}
    receiver = jaeger["receivers"]["kafka"]
    assert receiver["traces"]["encoding"] == "otlp_proto"
    brokers = [jaeger_env(b) for b in receiver["brokers"]]
    assert environment(services["jaeger"])["KAFKA_BROKERS"] in brokers
    protocols = jaeger["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    # Components named in the pipeline and extensions are all defined.
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(jaeger[kind]), kind
    assert set(jaeger["service"]["extensions"]) <= set(jaeger["extensions"])
    storage = jaeger["extensions"]["jaeger_storage"]["backends"]
    assert jaeger["extensions"]["jaeger_query"]["storage"]["traces"] in storage
    assert jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"] in storage
    # The compose service mounts this file where its command points, and publishes the ports.
    jaeger_service = services["jaeger"]
    assert jaeger_service["image"].startswith("jaegertracing/jaeger:2.")
    mount = next(v for v in jaeger_service["volumes"] if v.startswith("./docker/jaeger.yaml:"))
    assert mount.split(":")[1] in jaeger_service["command"]
    ports = {p.split(":")[0] for p in jaeger_service["ports"]}
    assert {"16686", "4317", "4318"} <= ports


def test_kafka_is_kraft_with_host_and_container_listeners(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert set(advertised) == {"INTERNAL", "EXTERNAL"}
    assert advertised["EXTERNAL"] == "localhost:9092"
    assert "9092:9092" in kafka["ports"]
    assert "test" in kafka["healthcheck"]
    for name, service in services.items():
        bootstrap = environment(service).get("BINBATON_BOOTSTRAP_SERVERS")
        if bootstrap is not None:
            assert bootstrap == advertised["INTERNAL"], name
            needs = service.get("depends_on", {})
            assert "kafka" in needs or "topics" in needs, name


def test_topic_init_runs_once_before_the_services(services: dict[str, Any]) -> None:
    topics = services["topics"]
    assert topics["command"] == ["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("classifier", "jaeger", *workers(services)):
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name


def workers(services: dict[str, Any]) -> list[str]:
    return [name for name, s in services.items() if s.get("command") == WORKER_COMMAND]


def test_workers_reserve_a_gpu_and_cover_every_bin_once(services: dict[str, Any]) -> None:
    names = workers(services)
    assert len(names) >= 2  # one service per bin group
    covered: list[int] = []
    for name in names:
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        assert "container_name" not in service  # scalable with --scale
        assert service["build"]["dockerfile"] == "docker/Dockerfile.cuda"
        env = environment(service)
        assert env["BINBATON_DEVICE"] == "cuda"
        covered += [int(b) for b in env["BINBATON_BINS"].split(",")]
    num_bins = int(environment(services["classifier"])["BINBATON_BINS"])
    assert int(environment(services["topics"])["BINBATON_BINS"]) == num_bins
    assert sorted(covered) == list(range(num_bins))
    assert services["classifier"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"


def test_dockerfiles_copy_what_exists() -> None:
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        dockerfile = ROOT / "docker" / name
        copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile.read_text(), flags=re.M)
        sources = [source for line in copies for source in line.split()]
        assert sources, name
        missing = [s for s in sources if not (ROOT / s).exists()]
        assert not missing, f"{name} copies paths missing from the repository: {missing}"
        assert 'ENTRYPOINT ["binbaton"]' in dockerfile.read_text()
        ignore = [line.strip() for line in
                  (ROOT / "docker" / f"{name}.dockerignore").read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
        assert ignore[0] == "*", "the build context sends only what the image installs"
        assert not any(".venv" in line for line in ignore)
