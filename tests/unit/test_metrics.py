"""The Prometheus endpoint: scraped over HTTP, counters and histograms move as expected."""

from __future__ import annotations

import socket

import pytest
from binbaton.schemas.messages import ErrorInfo, Result, Timings, Usage
from binbaton.schemas.settings import PortInUse, UserError
from binbaton.service.kafka.broker import free_port
from binbaton.service.telemetry.metrics import Metrics, MetricsConfig
from helpers.prometheus import scrape


def ok_result(request_id: str, completion: int, predicted: int, bin_index: int) -> Result:
    # received 0 ms, first token at 200 ms, finished at 200 + 50 * (completion - 1) ms.
    finished = 200 + 50 * (completion - 1)
    return Result(id=request_id, status="ok", finish_reason="length",
                  usage=Usage(prompt_tokens=7, completion_tokens=completion), bin=bin_index,
                  predicted_tokens=predicted,
                  timings=Timings(received=0, classified=5, admitted=100, first_token=200,
                                  finished=finished))


@pytest.fixture
def served() -> tuple[Metrics, int]:
    metrics = Metrics(model="tiny-llama")
    port = metrics.serve(MetricsConfig(port=free_port(), host="127.0.0.1"))
    assert port is not None
    yield metrics, port
    metrics.close()


def test_results_move_counters_and_genai_histograms(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    before = scrape(port)
    assert ("binbaton_output_tokens_total", (("bin", "1"),)) not in before

    metrics.observe_result(ok_result("a", completion=11, predicted=20, bin_index=1))
    metrics.observe_result(ok_result("b", completion=5, predicted=4, bin_index=1))
    metrics.observe_result(Result(id="c", status="error", error=ErrorInfo("too_long", "x"),
                                  bin=1, timings=Timings(received=0, finished=30)))
    after = scrape(port)

    assert after[("binbaton_requests_total", (("stage", "worker"), ("status", "ok")))] == 2
    assert after[("binbaton_requests_total", (("stage", "worker"), ("status", "error")))] == 1
    assert after[("binbaton_request_errors_total",
                  (("code", "too_long"), ("stage", "worker")))] == 1
    assert after[("binbaton_output_tokens_total", (("bin", "1"),))] == 16
    assert after[("binbaton_input_tokens_total", (("bin", "1"),))] == 14

    model = ("gen_ai_request_model", "tiny-llama")
    ttft = ("bin", "1"), model
    assert after[("gen_ai_server_time_to_first_token_seconds_count", ttft)] == 2
    assert after[("gen_ai_server_time_to_first_token_seconds_sum", ttft)] == pytest.approx(0.4)
    # Both requests decode at 50 ms per token after the first.
    assert after[("gen_ai_server_time_per_output_token_seconds_sum", ttft)] == \
        pytest.approx(0.1)
    assert after[("gen_ai_server_time_per_output_token_seconds_bucket",
                  (("bin", "1"), model, ("le", "0.05")))] == 2
    assert after[("gen_ai_server_time_per_output_token_seconds_bucket",
                  (("bin", "1"), model, ("le", "0.025")))] == 0
    ok_duration = ("bin", "1"), model, ("status", "ok")
    assert after[("gen_ai_server_request_duration_seconds_count", ok_duration)] == 2
    assert after[("gen_ai_server_request_duration_seconds_sum", ok_duration)] == \
        pytest.approx(0.7 + 0.4)
    error_duration = ("bin", "1"), model, ("status", "error")
    assert after[("gen_ai_server_request_duration_seconds_count", error_duration)] == 1

    # |20 - 11| = 9 and |4 - 5| = 1.
    assert after[("binbaton_predictor_error_tokens_count", (("bin", "1"),))] == 2
    assert after[("binbaton_predictor_error_tokens_sum", (("bin", "1"),))] == 10
    assert after[("binbaton_predictor_error_tokens_bucket", (("bin", "1"), ("le", "8.0")))] == 1


def test_gauges_and_classifier_counters(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.set_queue_depth(0, 12)
    metrics.set_queue_depth(0, 3)
    metrics.set_consumer_lag("binbaton.bin.0", 1, 40)
    metrics.set_batch(running=6, capacity=8, bin_index=0)
    metrics.observe_routed(2)
    metrics.observe_routed(2)
    metrics.observe_rejected("classifier", "invalid_json")
    metrics.observe_prediction(predicted=100, actual=40, bin_index=None)
    values = scrape(port)
    assert values[("binbaton_queue_depth", (("bin", "0"),))] == 3
    assert values[("binbaton_consumer_lag",
                   (("partition", "1"), ("topic", "binbaton.bin.0")))] == 40
    assert values[("binbaton_batch_occupancy_ratio", (("bin", "0"),))] == 0.75
    assert values[("binbaton_batch_running", (("bin", "0"),))] == 6
    assert values[("binbaton_routed_requests_total", (("bin", "2"),))] == 2
    assert values[("binbaton_requests_total", (("stage", "classifier"), ("status", "ok")))] == 2
    assert values[("binbaton_request_errors_total",
                   (("code", "invalid_json"), ("stage", "classifier")))] == 1
    assert values[("binbaton_predictor_error_tokens_sum", (("bin", "all"),))] == 60


def test_port_zero_serves_nothing_and_bad_config_fails() -> None:
    metrics = Metrics()
    assert metrics.serve(MetricsConfig(port=0)) is None
    metrics.close()
    with pytest.raises(ValueError, match="metrics port"):
        MetricsConfig(port=70000)
    with pytest.raises(ValueError, match="host"):
        MetricsConfig(host="")


def test_two_metrics_objects_do_not_collide() -> None:
    first, second = Metrics(), Metrics()  # own registries: no "Duplicated timeseries" error
    first.set_queue_depth(0, 1)
    assert second.registry.get_sample_value("binbaton_queue_depth", {"bin": "0"}) is None
    assert first.registry.get_sample_value("binbaton_queue_depth", {"bin": "0"}) == 1


def test_the_endpoint_binds_this_machine_by_default_and_a_taken_port_is_a_user_error() -> None:
    assert MetricsConfig().host == "127.0.0.1"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"metrics port {port} on 127.0.0.1 is in use: "
                                            "give another --metrics-port") as caught:
            Metrics().serve(MetricsConfig(port=port))
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 1
