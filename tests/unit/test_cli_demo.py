"""The demo's workloads and summary table (the full demo runs in `make demo`)."""

from __future__ import annotations

import msgspec
import pytest
from binbaton.schemas.messages import Request, Result, Timings, Usage
from binbaton.service.app.commands.demo import COMMAND
from binbaton.service.app.demo import (
    CHAT_MAX_TOKENS,
    CHAT_MODEL,
    DEMO_SPAN_S,
    PROMPT_MAX_TOKENS,
    SPAN_S,
    build_workload,
    demo_settings,
    summary,
)
from binbaton.service.app.flags import Values, resolve
from binbaton.service.app.workload import PROMPT_SLICE, load_prompts
from binbaton.service.predictor.corpus import is_held_out
from binbaton.service.predictor.registry import DEFAULT_ARTIFACT


def given(**values: object) -> Values:
    """The demo's flag values with these given (no environment)."""
    return resolve(values, COMMAND.flags, environ={})


def decoded(workload) -> list[Request]:
    return [msgspec.json.decode(m.value, type=Request) for m in workload]


def test_the_prompt_slice_is_held_out_and_small() -> None:
    rows = load_prompts()
    assert len(rows) == 300 and PROMPT_SLICE.stat().st_size < 200_000
    assert all(is_held_out(row.prompt) for row in rows)  # never trained on
    assert {row.source for row in rows} == {"gsm8k", "gpteacher-roleplay",
                                            "gpteacher-toolformer"}


def test_prompt_workload_lets_the_model_stop_and_the_learned_edges_bin_it() -> None:
    workload = build_workload("prompts", 40, time_scale=None)
    requests = decoded(workload)
    prompts = load_prompts(limit=40)
    assert [r.prompt for r in requests] == [p.prompt for p in prompts]
    assert len({r.id for r in requests}) == 40
    assert all(r.max_tokens == PROMPT_MAX_TOKENS and not r.ignore_eos for r in requests)
    assert all("length_hint" not in r.metadata and r.metadata["source"] for r in requests)
    at = [m.at_s for m in workload]
    assert at == sorted(at) and 0 < at[-1] <= DEMO_SPAN_S + 1e-6  # trace arrivals, squeezed

    settings = demo_settings(given(model="/m", bootstrap_servers="h:1", predictor="auto"),
                             workload)
    assert settings["predictor"] == "auto"  # the classifier picks the learned predictor
    from binbaton.service.predictor.learned import LengthModel

    trained = tuple(LengthModel.load(DEFAULT_ARTIFACT).info["bin_edges"])
    assert settings["bin_edges"] == trained and len(trained) == 3  # k = 4 by default


def test_other_bin_counts_get_equal_mass_edges_over_the_predictions() -> None:
    workload = build_workload("prompts", 60, time_scale=None)
    settings = demo_settings(given(model="/m", bootstrap_servers="h:1", bins=2,
                                   predictor="learned"), workload)
    (edge,) = settings["bin_edges"]
    from binbaton.service.predictor.interface import PredictionInput
    from binbaton.service.predictor.registry import make_predictor

    predicted = make_predictor("learned").predict(
        [PredictionInput(r.prompt, (), r.max_tokens) for r in decoded(workload)])
    below = sum(p <= edge for p in predicted)
    assert abs(below - len(predicted) / 2) <= 3  # the median: equal mass on both sides


def test_trace_workload_is_the_trace_scaled_down() -> None:
    workload = build_workload("trace", 50, time_scale=None)
    requests = decoded(workload)
    assert len(requests) == 50 and len({r.id for r in requests}) == 50
    assert all(1 <= r.max_tokens <= 96 and r.ignore_eos for r in requests)
    assert all(r.metadata["length_hint"] == str(r.max_tokens) for r in requests)
    assert workload[-1].at_s <= DEMO_SPAN_S + 1e-6
    settings = demo_settings(given(model="/m", bootstrap_servers="h:1"), workload, "trace")
    assert settings["predictor"] == "oracle" and len(settings["bin_edges"]) == 2


def test_an_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        build_workload("poems", 5)


def test_summary_reports_throughput_latency_bins_and_rank_correlation() -> None:
    def result(i: int, bin: int, predicted: int, tokens: int) -> Result:
        return Result(id=f"r{i}", status="ok", bin=bin, predicted_tokens=predicted,
                      finish_reason="length" if tokens == 30 else "stop",
                      usage=Usage(prompt_tokens=3, completion_tokens=tokens),
                      timings=Timings(first_token=1000 + 50, finished=1000 + 100 * (i + 1)))

    results = {r.id: r for r in [result(0, 0, 4, 4), result(1, 0, 6, 6), result(2, 0, 5, 2),
                                 result(3, 2, 25, 30)]}
    table = summary(results, {f"r{i}": 1.0 for i in range(4)}, wall_s=1.0)
    assert "4 answered, 4 ok, 0 errors" in table
    assert "105.0 output tok/s" in table  # 42 tokens over 0.4 s
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.strip()[:1].isdigit()}
    # bin, requests, mean predicted, mean actual, p50 actual, capped
    assert rows["0"][1:] == ["3", "5.0", "4.0", "4.0", "0"]
    assert rows["2"][1:] == ["1", "25.0", "30.0", "30.0", "1"]
    # ranks: predicted 4,6,5,25 vs actual 4,6,2,30 -> (1,3,2,4) vs (2,3,1,4): rho = 0.8
    assert table.splitlines()[-1].endswith("over 4 requests: 0.800")


def test_chat_workload_sends_held_out_instructions_as_user_messages() -> None:
    workload = build_workload("chat", 12, time_scale=None)
    requests = decoded(workload)
    prompts = load_prompts(limit=12)
    assert [[(m.role, m.content) for m in r.messages or []] for r in requests] == [
        [("user", p.prompt)] for p in prompts]
    assert all(r.prompt is None and r.max_tokens == CHAT_MAX_TOKENS and not r.ignore_eos
               for r in requests)
    at = [m.at_s for m in workload]
    # The trace's arrivals, stretched (or squeezed) over the chat span: later requests are
    # routed after the predictor learned from earlier results.
    assert at == sorted(at) and abs(at[-1] - SPAN_S["chat"]) < 1e-6

    settings = demo_settings(given(bootstrap_servers="h:1", predictor="auto"), workload,
                             "chat")
    assert settings["model"] == CHAT_MODEL and len(settings["bin_edges"]) == 3
    mine = demo_settings(given(model="/m", bootstrap_servers="h:1"), workload, "chat")
    assert mine["model"] == "/m"
    assert demo_settings(given(bootstrap_servers="h:1"), build_workload("prompts", 5),
                         "prompts")["model"] != CHAT_MODEL  # the 2M demo model


def test_summary_thirds_and_question_answer_pairs() -> None:
    sources = ["roleplay", "math", "tool"]
    results = {}
    for i in range(12):
        length = [5, 20, 60][i % 3] + i
        results[f"r{i:02d}"] = Result(
            id=f"r{i:02d}", status="ok", bin=0, predicted_tokens=length if i >= 8 else 12 - i,
            text=f"answer {i}\nsecond line", finish_reason="stop" if i % 2 else "length",
            usage=Usage(prompt_tokens=3, completion_tokens=length),
            metadata={"source": sources[i % 3]},
            timings=Timings(first_token=1000 + 50, finished=1000 + 100 * (i + 1)))
    sent = {rid: 1.0 + i for i, rid in enumerate(results)}
    questions = {rid: f"question {rid}" + "?" * (12 - i) for i, rid in enumerate(results)}
    table = summary(results, sent, wall_s=1.0, questions=questions).splitlines()
    thirds = next(line for line in table if "first third" in line)
    # first 4 sent: actual 5, 21, 62, 8 vs predicted 12, 11, 10, 9; last 4: predicted = actual
    assert "first third (4 requests): -0.400" in thirds and "last third (4): 1.000" in thirds
    pairs = [line for line in table if line.startswith(("  Q: ", "  A: "))]
    assert len(pairs) == 6
    # complete answers first, one per source, the shortest question first
    assert pairs[0] == "  Q: question r11?" and pairs[1].startswith("  A: answer 11 second line")
    assert pairs[1].endswith("[71 tokens, stop]")
    assert [p.split()[2].rstrip("?") for p in pairs[::2]] == ["r11", "r09", "r07"]
    assert summary(results, sent, wall_s=1.0).count("Q: ") == 0  # no questions: no pairs
