"""``binbaton bench engine``: one process, one model, one workload, every system in turn.

Systems (``--systems``, comma-separated specs ``NAME[:k][@lengths]``):
- ``hf-generate``: Hugging Face ``generate`` in static batches of B (left padding);
- ``hf-continuous``: transformers' continuous batching (paged cache), at most B running;
- binbaton's Engine with a policy: ``static``, ``multibin-static:k``, ``insert``,
  ``multibin-insert:k``; ``@oracle`` (default) bins on the true length, ``@predicted``
  on the ``--predictor``'s lengths.
Every request is submitted at t = 0 (offline throughput); outputs are forced to the
workload's lengths (ignore_eos, max_tokens = target).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from binbaton.bench import huggingface
from binbaton.bench.checkpoint import PRESETS, describe_checkpoint, prepare_checkpoint
from binbaton.bench.lengths import ORACLE, assign_bins, make_predictor, predict_lengths
from binbaton.bench.measure import Measurement
from binbaton.bench.memory import PeakMemory
from binbaton.bench.plot import baseline, plot_result
from binbaton.bench.results import RESULTS_DIR, BenchResult, Row, now_iso, write_result
from binbaton.bench.workload import AZURE_CSV, WORKLOADS, BenchRequest, Workload, build_workload
from binbaton.workers.engine.config import POLICIES, EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from tqdm import tqdm

HF_SYSTEMS = ("hf-generate", "hf-continuous")
LENGTH_SOURCES = (ORACLE, "predicted")
DEFAULT_SYSTEMS = (
    "hf-generate,hf-continuous,static,multibin-static:2,multibin-static:4,multibin-static:8,"
    "insert,multibin-insert:4,multibin-static:4@predicted,multibin-insert:4@predicted"
)


@dataclass(frozen=True)
class SystemSpec:
    name: str  # hf-generate | hf-continuous | an engine policy
    bins: int = 1
    lengths: str = ORACLE  # what the bins are computed from

    def __post_init__(self) -> None:
        if self.name not in HF_SYSTEMS + POLICIES:
            known = HF_SYSTEMS + POLICIES
            raise ValueError(f"unknown system {self.name!r}; choose from {known}")
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        if self.bins > 1 and not self.name.startswith("multibin"):
            raise ValueError(f"{self.name} takes no bin count (only multibin-* policies do)")
        if self.lengths not in LENGTH_SOURCES:
            raise ValueError(f"lengths must be one of {LENGTH_SOURCES}, got {self.lengths!r}")

    @property
    def system(self) -> str:
        return self.name if self.name in HF_SYSTEMS else "binbaton"

    @property
    def policy(self) -> str:
        return "" if self.name in HF_SYSTEMS else self.name

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        """'multibin-static:4@predicted' -> SystemSpec('multibin-static', 4, 'predicted')."""
        text, _, lengths = text.strip().partition("@")
        name, _, bins = text.partition(":")
        try:
            k = int(bins) if bins else (4 if name.startswith("multibin") else 1)
        except ValueError as exc:
            raise ValueError(f"bad bin count in system spec {text!r}") from exc
        return cls(name, k, lengths or ORACLE)


def parse_systems(text: str) -> list[SystemSpec]:
    specs = [SystemSpec.parse(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError("--systems names no system")
    return specs


def add_workload_arguments(parser: argparse.ArgumentParser, default_requests: str) -> None:
    """The model/workload flags `bench engine` and `bench pipeline` share."""
    parser.add_argument("--model", default="tiny", help=f"checkpoint dir or {sorted(PRESETS)}")
    parser.add_argument("--workload", choices=WORKLOADS, default="azure")
    parser.add_argument("--requests", type=int, default=None, help=default_requests)
    parser.add_argument("--scale", type=float, default=8.0, help="azure: divide lengths by this")
    parser.add_argument("--trace", type=Path, default=AZURE_CSV)
    parser.add_argument("--lo", type=int, default=100, help="uniform: shortest length")
    parser.add_argument("--hi", type=int, default=1024, help="uniform: longest length")
    parser.add_argument("--batch", type=int, default=16, help="B: running requests at most")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser, default_requests="default 128, uniform: 256")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--predictor", default="learned", help="for @predicted rows")
    parser.add_argument("--predictor-path", type=Path, default=None)
    parser.add_argument("--kv-budget-tokens", type=int, default=None,
                        help="binbaton KV cache (default: B x longest request, no pressure)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per system, round-robin; the fastest is reported")
    parser.add_argument("--step-cost", default="1,4,16,64",
                        help="batch sizes to time one binbaton decode step at ('' to skip)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="results name (default engine-<workload>)")
    parser.add_argument("--no-progress", action="store_true")


# ---- binbaton ---------------------------------------------------------------------------


def engine_requests(
    requests: Sequence[BenchRequest], predicted: Sequence[int], bins: Sequence[int]
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            id=r.id,
            prompt_token_ids=r.prompt_token_ids,
            sampling=SamplingParams(max_tokens=r.output_tokens, ignore_eos=True),
            bin=b,
            predicted_tokens=p,
        )
        for r, p, b in zip(requests, predicted, bins, strict=True)
    ]


def make_engine(args: argparse.Namespace, path: Path, policy: str, max_len: int) -> Any:
    budget = args.kv_budget_tokens or args.batch * max_len
    return Engine(
        EngineConfig(
            model=str(path),
            device=args.device,
            dtype=args.dtype,
            policy=policy,
            max_batch=args.batch,
            kv_budget_tokens=budget,
            seed=args.seed,
        )
    )


def run_engine(
    engine: Any,
    requests: list[GenerationRequest],
    memory: PeakMemory,
    progress: bool,
    desc: str,
) -> Measurement:
    engine.generate([_warmup_request(requests[0])])
    before = engine.stats
    steps_before, prefill_before, decode_before = before.steps, before.prefill_s, before.decode_s
    memory.reset()
    t0 = time.time()
    cpu0 = time.process_time()
    for request in requests:
        engine.add(request)
    outputs = []
    with tqdm(total=len(requests), desc=desc, unit="req", disable=not progress) as bar:
        while engine.has_work():
            finished = engine.step()
            outputs.extend(finished)
            bar.update(len(finished))
    elapsed = time.time() - t0
    cpu_s = time.process_time() - cpu0
    ok = [o for o in outputs if o.ok]
    kv_bytes = sum(t.numel() * t.element_size() for t in (*engine.cache.k, *engine.cache.v))
    return Measurement(
        elapsed_s=elapsed,
        output_tokens=sum(len(o.token_ids) for o in ok),
        ttft_s=[o.first_token_at - t0 for o in ok if o.first_token_at is not None],
        latency_s=[o.finished_at - t0 for o in ok],
        peak_memory_mb=memory.peak_mb(),
        failed=len(requests) - len(ok),
        cpu_s=cpu_s,
        extra={
            "steps": engine.stats.steps - steps_before,
            "prefill_s": round(engine.stats.prefill_s - prefill_before, 3),
            "decode_s": round(engine.stats.decode_s - decode_before, 3),
            "preempted": engine.stats.preempted,
            "kv_cache_mb": round(kv_bytes / 2**20, 2),
        },
    )


def _warmup_request(sample: GenerationRequest) -> GenerationRequest:
    return GenerationRequest(
        id="warmup",
        prompt_token_ids=sample.prompt_token_ids[:16],
        sampling=SamplingParams(max_tokens=2, ignore_eos=True),
    )


def decode_step_cost(
    args: argparse.Namespace, path: Path, batches: Sequence[int], vocab: int
) -> dict[str, float]:
    """Mean ms of one binbaton step with b sequences decoding (prompt 32, 32 new tokens).

    On a GPU a small model's decode step costs about the same at b = 1 and b = 64; on a CPU
    it grows with b, which caps what batching policies can gain there.
    """
    cost: dict[str, float] = {}
    for b in batches:
        engine = make_engine(argparse.Namespace(**{**vars(args), "batch": b}), path, "static", 64)
        reqs = [
            GenerationRequest(
                id=f"cost-{i}",
                prompt_token_ids=tuple(3 + (i * 7 + j) % (vocab - 3) for j in range(32)),
                sampling=SamplingParams(max_tokens=32, ignore_eos=True),
            )
            for i in range(b)
        ]
        engine.generate(reqs[:1])
        before_s, before_steps = engine.stats.decode_s, engine.stats.steps
        engine.generate(reqs)
        steps = engine.stats.steps - before_steps
        cost[str(b)] = round((engine.stats.decode_s - before_s) / steps * 1000, 3)
        del engine
    return cost


# ---- the run ------------------------------------------------------------------------------


def run_one(
    spec: SystemSpec,
    args: argparse.Namespace,
    path: Path,
    workload: Workload,
    predictions: dict[str, list[int]],
    memory: PeakMemory,
    max_len: int,
) -> Row:
    progress = not args.no_progress
    requests = list(workload.requests)
    label = f"{spec.name}{f':{spec.bins}' if spec.bins > 1 else ''}@{spec.lengths}"
    if spec.name == "hf-generate":
        model = huggingface.load_model(str(path), args.device, args.dtype)
        pad = model.generation_config.pad_token_id
        measured = huggingface.run_generate(
            model, requests, args.batch, 0 if pad is None else int(pad), memory, progress
        )
    elif spec.name == "hf-continuous":
        model = huggingface.load_model(str(path), args.device, args.dtype)
        measured = huggingface.run_continuous(
            model, requests, args.batch, memory, progress=progress
        )
    else:
        predicted = predictions[spec.lengths]
        bins = assign_bins(predicted, spec.bins)
        engine = make_engine(args, path, spec.name, max_len)
        measured = run_engine(
            engine, engine_requests(requests, predicted, bins), memory, progress, label
        )
        del engine
    expected = sum(workload.output_lengths)
    if measured.output_tokens != expected and measured.failed == 0:
        measured.extra["output_tokens_mismatch"] = f"{measured.output_tokens} != {expected}"
    lengths = {} if spec.system != "binbaton" or spec.bins == 1 else {"lengths": spec.lengths}
    return measured.to_row(spec.system, spec.policy, spec.bins, args.batch, **lengths)


def fastest(runs: list[Row]) -> Row:
    """The run with the least wall time (the least disturbed), listing every run's time."""
    best = min(runs, key=lambda row: row.extra["elapsed_s"])
    if len(runs) == 1:
        return best
    extra = {**best.extra, "elapsed_s_runs": [row.extra["elapsed_s"] for row in runs]}
    return Row(best.system, best.policy, best.bins, best.batch, best.output_tokens_per_s,
               best.requests_per_s, best.ttft_ms, best.latency_ms, best.peak_memory_mb, extra)


def run(args: argparse.Namespace) -> BenchResult:
    if args.batch < 1 or args.threads < 1 or args.repeat < 1:
        raise ValueError("--batch, --threads and --repeat must be >= 1")
    specs = parse_systems(args.systems)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = now_iso()
    preset = args.model if args.model in PRESETS else None
    path = prepare_checkpoint(args.model)
    model_info = describe_checkpoint(path, preset)
    context = int(model_info.get("max_position_embeddings", 2048))
    num = args.requests or (256 if args.workload == "uniform" else 128)
    workload = build_workload(
        args.workload, num, int(model_info["vocab_size"]), context, args.seed, args.scale,
        args.lo, args.hi, args.trace, tokenizer=_tokenizer(path, args.workload),
    )
    max_len = max(len(r.prompt_token_ids) + r.output_tokens for r in workload.requests)
    predictions = {ORACLE: predict_lengths(workload.requests, None, workload.max_output)}
    predictor_name = None
    if any(s.lengths == "predicted" for s in specs):
        predictor = make_predictor(args.predictor, args.predictor_path)
        predictor_name = getattr(predictor, "name", args.predictor)
        predictions["predicted"] = predict_lengths(
            workload.requests, predictor, workload.max_output
        )
    memory = PeakMemory(args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    notes: dict[str, Any] = {
        "peak_memory_mb": memory.kind,
        "threads": args.threads,
        "dtype": args.dtype,
        "arrival": "all requests submitted at t=0",
        "output_lengths": "forced: ignore_eos, max_tokens = target (HF: min/max_new_tokens)",
        "predictor": predictor_name,
        "transformers": _transformers_version(),
        "torch": torch.__version__,
    }
    runs: list[list[Row]] = [[] for _ in specs]
    total = len(specs) * args.repeat
    with tqdm(total=total, desc="systems", unit="run", disable=args.no_progress) as bar:
        for _ in range(args.repeat):  # round-robin, so a change in load hits every system
            for i, spec in enumerate(specs):
                runs[i].append(run_one(spec, args, path, workload, predictions, memory, max_len))
                bar.update(1)
    rows = [fastest(r) for r in runs]
    notes["repeats"] = f"{args.repeat} per system, round-robin; each row is its fastest run"
    if args.step_cost.strip():
        batches = [int(b) for b in args.step_cost.split(",") if b.strip()]
        notes["decode_step_ms_by_batch"] = decode_step_cost(
            args, path, batches, int(model_info["vocab_size"])
        )
    return BenchResult(
        name=args.name or f"engine-{args.workload}",
        device=device,
        model=model_info,
        workload={**workload.describe(), "batch": args.batch},
        started=started,
        rows=tuple(rows),
        notes=notes,
    )


def _tokenizer(path: Path, workload: str) -> Any:
    if workload != "instructions":
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def print_table(result: BenchResult) -> None:
    base = baseline(result.rows)
    print(f"{'system':44s} {'tok/s':>9s} {'x static':>8s} {'req/s':>8s} "
          f"{'ttft p50':>9s} {'lat p50':>9s} {'lat p99':>9s} {'peak MB':>8s}")
    for row in result.rows:
        ratio = row.output_tokens_per_s / base.output_tokens_per_s if base else float("nan")
        print(
            f"{row.label:44s} {row.output_tokens_per_s:9.1f} {ratio:8.2f} "
            f"{row.requests_per_s:8.2f} {row.ttft_ms.p50:9.0f} {row.latency_ms.p50:9.0f} "
            f"{row.latency_ms.p99:9.0f} {row.peak_memory_mb or 0:8.0f}"
        )


def main(args: argparse.Namespace) -> int:
    result = run(args)
    path = write_result(result, args.out)
    plot_result(result, path.with_suffix(".png"))
    print_table(result)
    if "decode_step_ms_by_batch" in result.notes:
        print("binbaton decode step ms by batch size:", result.notes["decode_step_ms_by_batch"])
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    return 0
