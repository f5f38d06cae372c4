"""Replay a workload with arrival steps through the engine, one step at a time.

Tests and benchmarks use it to submit requests mid-flight (admissions while other
sequences are mid-decode) and to keep each step's counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest
from binbaton.workers.engine.stats import StepStats


@dataclass(frozen=True)
class Arrival:
    step: int  # the request is added just before this engine step
    request: GenerationRequest


@dataclass
class ReplayRun:
    outputs: dict[str, GenerationOutput]  # by request id
    steps: list[StepStats]  # one per engine step
    mid_decode_admissions: int  # steps that admitted while others were mid-decode
    preempted: int


def replay(engine: Engine, arrivals: list[Arrival]) -> ReplayRun:
    """Add each request at its step; step until everything has finished."""
    pending = sorted(arrivals, key=lambda a: a.step)
    outputs: dict[str, GenerationOutput] = {}
    steps: list[StepStats] = []
    mid_decode = 0
    while pending or engine.has_work():
        while pending and pending[0].step <= len(steps):
            engine.add(pending.pop(0).request)
        decoding_before = any(s.num_generated > 0 for s in engine.running)
        outputs.update((o.id, o) for o in engine.step())
        steps.append(engine.last_step)
        mid_decode += int(decoding_before and engine.last_step.admitted > 0)
    return ReplayRun(outputs, steps, mid_decode, engine.stats.preempted)
