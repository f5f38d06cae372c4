import pytest
from binbaton.schemas.codec import decode_result, encode
from binbaton.schemas.messages import BinnedRequest, Request
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.request import EngineError, GenerationOutput
from binbaton.workers.messages import (
    build_result,
    to_generation_request,
    trace_headers,
    unix_ms,
)
from binbaton.workers.worker import ready_line


def binned(**request_fields) -> BinnedRequest:
    fields = {"id": "r1", "prompt": "hello", "max_tokens": 8, "metadata": {"user": "u"}}
    fields.update(request_fields)
    return BinnedRequest(
        request=Request(**fields),
        prompt_token_ids=[5, 6, 7],
        predicted_tokens=6,
        bin=2,
        received=1_700_000_000_000,
        classified=1_700_000_000_010,
    )


def test_generation_request_carries_sampling_and_bin():
    req = to_generation_request(
        binned(temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=["\n"], ignore_eos=True)
    )
    assert req.id == "r1"
    assert req.prompt_token_ids == (5, 6, 7)
    assert req.bin == 2
    assert req.predicted_tokens == 6
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (8, 0.7, 0.9, 5, 3)
    assert s.stop == ("\n",)
    assert s.ignore_eos


def test_generation_request_rejects_empty_prompt_tokens():
    message = binned()
    message.prompt_token_ids = []
    with pytest.raises(ValueError, match="no prompt_token_ids"):
        to_generation_request(message)


def test_ok_result_from_output():
    output = GenerationOutput(
        id="r1", token_ids=(9, 10, 11), text="abc", finish_reason="length", prompt_tokens=3,
        bin=2, admitted_at=1_700_000_000.02, first_token_at=1_700_000_000.5,
        finished_at=1_700_000_001.25,
    )
    result = build_result(binned(), output, "host:1")
    assert result.status == "ok"
    assert result.text == "abc"
    assert result.token_ids == [9, 10, 11]
    assert result.finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 3)
    assert (result.bin, result.predicted_tokens, result.worker) == (2, 6, "host:1")
    assert result.metadata == {"user": "u"}
    t = result.timings
    assert (t.received, t.classified) == (1_700_000_000_000, 1_700_000_000_010)
    assert (t.admitted, t.first_token, t.finished) == (
        1_700_000_000_020, 1_700_000_000_500, 1_700_000_001_250)
    assert result.error is None
    assert decode_result(encode(result)) == result  # valid on the wire


def test_engine_error_output_becomes_error_result():
    output = GenerationOutput(
        id="r1", token_ids=(), text="", finish_reason="error", prompt_tokens=3,
        error=EngineError("too_long", "prompt of 3 tokens exceeds 2"), finished_at=1.5,
    )
    result = build_result(binned(), output, "w")
    assert result.status == "error"
    assert result.finish_reason == "error"
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("too_long", "prompt of 3 tokens exceeds 2")
    assert result.timings.admitted is None
    assert result.timings.first_token is None
    assert result.timings.finished == 1500
    assert result.metadata == {"user": "u"}


def test_unix_ms():
    assert unix_ms(None) is None
    assert unix_ms(0.0) is None
    assert unix_ms(1.2345) == 1234


def test_trace_headers_pass_w3c_only():
    headers = [("traceparent", b"00-abc-def-01"), ("x-other", b"1"), ("tracestate", b"k=v")]
    assert trace_headers(headers) == [("traceparent", b"00-abc-def-01"), ("tracestate", b"k=v")]
    assert trace_headers(None) == []


def test_ready_line_format():
    config = WorkerConfig(bins=(0, 2), worker_id="h:7")
    assert ready_line(config) == "worker ready id=h:7 bins=0,2"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bins": ()}, "at least one bin"),
        ({"bins": (0, 0)}, "must not repeat"),
        ({"bins": (-1,)}, "non-negative"),
        ({"bins": (0,), "topic_prefix": "a b"}, "topic_prefix"),
        ({"bins": (0,), "max_in_flight": 0}, "max_in_flight"),
        ({"bins": (0,), "drain_timeout_s": -1}, "drain_timeout_s"),
        ({"bins": (0,), "worker_id": ""}, "worker_id"),
    ],
)
def test_worker_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorkerConfig(**kwargs)


def test_worker_config_names():
    config = WorkerConfig(bins=[1, 0], topic_prefix="p")
    assert config.bins == (1, 0)
    assert config.bin_topic(1) == "p.bin.1"
    assert config.group_id(1) == "p.worker.bin-1"
    assert config.results_topic == "p.results"
    assert config.dlq_topic == "p.dlq"
    assert ":" in WorkerConfig(bins=(0,)).worker_id  # hostname:pid
