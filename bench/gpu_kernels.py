"""The kernel section of a GPU benchmark (for ``binbaton bench gpu``): a warm-up that
compiles every kernel variant an engine run needs, the accuracy of each Triton kernel
against its torch twin, and decode-attention bandwidth against the device's copy
bandwidth.

    warm_up(shape, dtype, max_batch, block_size, device)  -> WarmUp
    accuracy(shape, dtypes, device)                        -> rows: op, dtype, max |error|
    decode_bandwidth(shape, dtype, device, ...)            -> rows: batch, context, GB/s
    run(device, quick=False)                               -> all three, results-file layout

On CUDA the kernels compile; elsewhere they run only under the Triton interpreter
(TRITON_INTERPRET=1 before triton is imported), and only ``quick`` sizes make sense: that
path exists so the code is testable without a GPU, its timings are not GPU figures.
Nothing here imports matplotlib, pytest, msgspec or aiokafka.

    python -m binbaton.bench.gpu_kernels --out bench/results       # on a GPU
    TRITON_INTERPRET=1 python -m binbaton.bench.gpu_kernels --quick --device cpu --out /tmp/k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from binbaton.bench.kernels import Timer, copy_bandwidth
from binbaton.bench.results import RESULTS_DIR, now_iso, slug
from binbaton.kernels.ops import TORCH_OPS

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = (512, 1024, 2048, 4096, 8192)
MIXED_BATCH = 64  # one batch whose lengths are spread uniformly over 1..max(contexts)
WARM_UP_CONTEXT = 257  # two splits even with 128-token tiles, and a partial last page


@dataclass(frozen=True)
class KernelShape:
    """The model dimensions the kernels see (same names as the engine's ModelShape, so
    that one can be passed instead)."""

    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    qk_norm: bool = False
    rms_norm_eps: float = 1e-6


QUICK_SHAPE = KernelShape(hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
                          head_dim=32, qk_norm=True)


def _triton_ops() -> Any:
    from binbaton.kernels import triton_ops  # imports triton

    return triton_ops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ inputs


@dataclass
class Layer:
    """One decoder layer's kernel inputs, laid out as the engine lays them out: packed
    [T, heads, D] activations, a paged cache, int64 slots and positions, int32 block
    tables and lengths, float32 rotary tables."""

    shape: Any  # KernelShape or the engine's ModelShape
    dtype: torch.dtype
    block_size: int
    device: torch.device
    num_blocks: int
    seed: int = 0
    gen: torch.Generator = field(init=False)
    device_gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)
        if self.device.type == "cuda":
            self.device_gen = torch.Generator(self.device).manual_seed(self.seed)
        s = self.shape
        cache = (self.num_blocks, self.block_size, s.num_kv_heads, s.head_dim)
        self.k_cache = self.randn(*cache)
        self.v_cache = self.randn(*cache)
        positions = self.num_blocks * self.block_size + 1
        self.cos = self.randn(positions, s.head_dim, dtype=torch.float32)
        self.sin = self.randn(positions, s.head_dim, dtype=torch.float32)
        self.norm_weight = self.randn(s.hidden_size)
        self.head_weight = self.randn(s.head_dim)

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if self.device.type == "cuda":  # gigabytes of cache: drawn on the device, not the CPU
            return torch.randn(*shape, generator=self.device_gen, device=self.device,
                               dtype=dtype)
        x = torch.randn(*shape, generator=self.gen)
        return x.to(device=self.device, dtype=dtype)

    def qkv(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.shape
        return (self.randn(tokens, s.num_heads, s.head_dim),
                self.randn(tokens, s.num_kv_heads, s.head_dim),
                self.randn(tokens, s.num_kv_heads, s.head_dim))

    def paged(self, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(block_tables [B, W] int32, seq_lens [B] int32): scattered blocks per sequence."""
        width = max(1, -(-max(lengths) // self.block_size))
        needed = sum(-(-n // self.block_size) for n in lengths)
        if needed > self.num_blocks:
            raise ValueError(f"{needed} blocks needed, the cache holds {self.num_blocks}")
        order = torch.randperm(self.num_blocks, generator=self.gen)
        tables = torch.zeros(len(lengths), width, dtype=torch.int32)
        used = 0
        for row, n in enumerate(lengths):
            blocks = -(-n // self.block_size)
            tables[row, :blocks] = order[used:used + blocks].int()
            used += blocks
        lens = torch.tensor(list(lengths), dtype=torch.int32)
        return tables.to(self.device), lens.to(self.device)

    def slots(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots, positions) [T] int64: distinct slots, positions within the rope table."""
        capacity = self.num_blocks * self.block_size
        slots = torch.randperm(capacity, generator=self.gen)[:tokens]
        positions = torch.randint(0, capacity, (tokens,), generator=self.gen)
        return slots.to(self.device), positions.to(self.device)


def op_calls(layer: Layer, ops: Any, tokens: int, lengths: Sequence[int] | None,
             num_splits: int | None = None) -> dict[str, Callable[[], Any]]:
    """Every op of one layer on ``tokens`` packed tokens: a prefill of ``tokens`` (one
    sequence) when ``lengths`` is None, else a decode step over sequences of ``lengths``.
    Each call returns what it computed (outputs, or the tensors it wrote)."""
    s, eps = layer.shape, layer.shape.rms_norm_eps
    hidden, residual = layer.randn(tokens, s.hidden_size), layer.randn(tokens, s.hidden_size)
    q, k, v = layer.qkv(tokens)
    slots, positions = layer.slots(tokens)
    gate_up = layer.randn(tokens, 2 * s.intermediate_size)
    scale = s.head_dim**-0.5
    caches = (layer.k_cache, layer.v_cache)

    def rope_store() -> tuple[torch.Tensor, ...]:
        q2, k2 = q.clone(), k.clone()
        kc, vc = caches[0].clone(), caches[1].clone()
        ops.rope_store_kv(q2, k2, v, kc, vc, slots, positions, layer.cos, layer.sin)
        return q2, k2, kc.view(-1, *kc.shape[2:])[slots], vc.view(-1, *vc.shape[2:])[slots]

    def store() -> tuple[torch.Tensor, ...]:
        kc, vc = caches[0].clone(), caches[1].clone()
        ops.store_kv(k, v, kc, vc, slots)
        return kc.view(-1, *kc.shape[2:])[slots], vc.view(-1, *vc.shape[2:])[slots]

    calls: dict[str, Callable[[], Any]] = {
        "rms_norm": lambda: ops.rms_norm(hidden, layer.norm_weight, eps),
        "rms_norm_residual": lambda: ops.rms_norm(hidden, layer.norm_weight, eps, residual),
        "rope_store_kv": rope_store,
        "store_kv": store,
        "silu_and_mul": lambda: ops.silu_and_mul(gate_up),
    }
    if s.qk_norm:
        calls["rms_norm_heads"] = lambda: ops.rms_norm(q, layer.head_weight, eps)
    if lengths is None:
        cu = torch.tensor([0, tokens], dtype=torch.int32, device=layer.device)
        calls["prefill_attention"] = lambda: ops.prefill_attention(q, k, v, cu, scale)
    else:
        tables, lens = layer.paged(lengths)
        extra = {} if num_splits is None else {"num_splits": num_splits}
        calls["decode_attention"] = lambda: ops.decode_attention(
            q, *caches, tables, lens, scale, **extra)
    return calls


# ------------------------------------------------------------------------ warm-up


@dataclass(frozen=True)
class WarmUp:
    seconds: float
    variants: dict[str, int]  # compiled variants per kernel (empty when interpreted)


def compiled_variants(device: torch.device) -> dict[str, int]:
    """Variants triton's JIT holds per kernel on ``device`` (none under the interpreter)."""
    from binbaton.kernels import (
        decode_attention,
        kv_store,
        prefill_attention,
        rms_norm,
        silu_and_mul,
    )
    from triton.runtime.jit import JITFunction

    kernels = {
        "decode_split": decode_attention._decode_split_kernel,
        "decode_merge": decode_attention._decode_merge_kernel,
        "prefill": prefill_attention._prefill_kernel,
        "store_kv": kv_store._store_kv_kernel,
        "rope_store_kv": kv_store._rope_store_kv_kernel,
        "rms_norm": rms_norm._rms_norm_kernel,
        "silu_and_mul": silu_and_mul._silu_and_mul_kernel,
    }
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    counts = {}
    for name, kernel in kernels.items():
        if isinstance(kernel, JITFunction):
            caches = getattr(kernel, "device_caches", {})
            counts[name] = len(caches[index][0]) if index in caches else 0
    return counts


def warm_up(shape: Any, dtype: torch.dtype, max_batch: int, block_size: int,
            device: torch.device) -> WarmUp:
    """Compile every kernel variant an engine run with these settings uses: prefill, a
    decode step written directly and one split into partials (whatever the batch, the
    heuristic picks one of the two), the norms with and without residual, rope + cache
    store and the activation. Kernel compile-time parameters depend only on these
    settings (tests/unit/test_kernels_launch.py checks that batch and lengths do not add
    variants), so after this nothing compiles while timing."""
    ops = _triton_ops()
    start = time.perf_counter()
    short = 2 * block_size + 3  # a partial last page
    long = max(WARM_UP_CONTEXT, short)
    layer = Layer(shape, dtype, block_size, device,
                  num_blocks=max_batch * -(-short // block_size) + -(-long // block_size))
    steps = ((short, None, None),  # prefill
             (1, [long], 1), (1, [long], 2),  # decode written directly, split into two
             (max_batch, [short] * max_batch, None))  # the largest decode batch
    for tokens, lengths, splits in steps:
        for call in op_calls(layer, ops, tokens, lengths, splits).values():
            call()
    _sync(device)
    return WarmUp(round(time.perf_counter() - start, 3), compiled_variants(device))


# ------------------------------------------------------------------------ accuracy


def _max_abs(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, max |b|) over matching tensors (nested tuples allowed)."""
    if isinstance(a, tuple):
        pairs = [_max_abs(x, y) for x, y in zip(a, b, strict=True)]
        return max(p[0] for p in pairs), max(p[1] for p in pairs)
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).abs().max()), float(b64.abs().max())


def accuracy(shape: Any, dtypes: Iterable[torch.dtype], device: torch.device,
             tokens: int = 37, context: int = 700, block_size: int = 16) -> list[dict[str, Any]]:
    """Max |Triton - torch twin| per op and dtype, on identical random inputs: prefill of
    ``tokens`` tokens, decode over ``tokens`` sequences up to ``context`` (direct and
    split into 3), every other op on ``tokens`` tokens."""
    ops, rows = _triton_ops(), []
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, context + 1, (tokens,), generator=gen).tolist()
    lengths[0] = context
    num_blocks = sum(-(-n // block_size) for n in lengths) + 4
    for dtype in dtypes:
        for mode, lens, splits in (("prefill", None, None), ("decode", lengths, 1),
                                   ("decode", lengths, 3)):
            layer_args = (shape, dtype, block_size, device, num_blocks)
            kernel = op_calls(Layer(*layer_args), ops, tokens, lens, splits)
            twin = op_calls(Layer(*layer_args), TORCH_OPS, tokens, lens, None)
            for name, call in kernel.items():
                if mode == "decode" and name != "decode_attention":
                    continue  # the other ops ran with the prefill's tokens already
                error, magnitude = _max_abs(call(), twin[name]())
                label = name if splits is None else f"{name} (splits {splits})"
                rows.append({"op": label, "dtype": str(dtype)[6:],
                             "max_abs_error": error, "max_abs_value": magnitude})
    return rows


# ------------------------------------------------------------------------ bandwidth


def decode_bandwidth(shape: Any, dtype: torch.dtype, device: torch.device,
                     batches: Iterable[int] = BATCHES, contexts: Iterable[int] = CONTEXTS,
                     mixed_batch: int | None = MIXED_BATCH, block_size: int = 16,
                     timer: Timer | None = None, max_cache_gb: float = 24.0,
                     copy_gb_per_s: float | None = None) -> list[dict[str, Any]]:
    """Decode attention's achieved GB/s (K/V rows of every sequence, q in, out back) per
    batch x context with every sequence at the full context, plus one batch of
    ``mixed_batch`` sequences with lengths uniform in 1..max(contexts); each row also
    carries the device's copy bandwidth (read + write of a large copy)."""
    timer = timer or Timer(device, warmup=5, iters=20)
    if copy_gb_per_s is None:
        copy_gb_per_s = copy_bandwidth(device, timer, quick=device.type != "cuda")
    contexts = list(contexts)
    cases = [(b, [c] * b, "uniform") for b in batches for c in contexts]
    if mixed_batch:
        gen = torch.Generator().manual_seed(7)
        mixed = torch.randint(1, max(contexts) + 1, (mixed_batch,), generator=gen).tolist()
        cases.append((mixed_batch, mixed, "mixed"))
    kv_bytes = 2 * shape.num_kv_heads * shape.head_dim * torch.finfo(dtype).bits // 8
    rows = []
    for batch, lengths, kind in cases:
        if sum(lengths) * kv_bytes / 1e9 > max_cache_gb:
            continue
        seconds, nbytes = _time_decode(shape, dtype, device, lengths, block_size, timer)
        achieved = nbytes / seconds / 1e9
        rows.append({
            "system": "triton", "policy": "", "batch": batch, "context": max(lengths),
            "lengths": kind, "time_us": round(seconds * 1e6, 3), "bytes": nbytes,
            "achieved_gb_per_s": round(achieved, 2),
            "copy_gb_per_s": round(copy_gb_per_s, 2),
            "fraction_of_copy": round(achieved / copy_gb_per_s, 4),
        })
    return rows


def _time_decode(shape: Any, dtype: torch.dtype, device: torch.device,
                 lengths: Sequence[int], block_size: int, timer: Timer) -> tuple[float, int]:
    """(seconds per decode_attention call, bytes it must move) on a fresh paged cache."""
    from binbaton.kernels.decode_attention import bytes_moved

    ops = _triton_ops()
    num_blocks = sum(-(-n // block_size) for n in lengths)
    layer = Layer(shape, dtype, block_size, device, num_blocks)
    q = layer.randn(len(lengths), shape.num_heads, shape.head_dim)
    tables, lens = layer.paged(lengths)
    args = (q, layer.k_cache, layer.v_cache, tables, lens, shape.head_dim**-0.5)
    seconds = timer(lambda: ops.decode_attention(*args, max_seq_len=max(lengths)))
    return seconds, bytes_moved(q, layer.k_cache, lens)


# ------------------------------------------------------------------------ all three


def run(device: torch.device, quick: bool = False, dtype: torch.dtype = torch.bfloat16,
        shape: Any = None, max_batch: int = 256, block_size: int = 16) -> dict[str, Any]:
    """Warm-up, accuracy and decode bandwidth in the results-file layout (``rows`` are
    the bandwidth rows; ``warm_up`` and ``accuracy`` ride along)."""
    if quick:
        shape, dtype = shape or QUICK_SHAPE, torch.float32
        max_batch, block_size = min(max_batch, 3), 8
    shape = shape or KernelShape()
    started = now_iso()
    warm = warm_up(shape, dtype, max_batch, block_size, device)
    errors = accuracy(shape, DTYPES.values(), device, block_size=block_size,
                      **({"tokens": 3, "context": 40} if quick else {}))
    timer = Timer(device, warmup=1 if quick else 5, iters=2 if quick else 20)
    batches, contexts = ((1, 3), (16, 40)) if quick else (BATCHES, CONTEXTS)
    before = compiled_variants(device)
    rows = decode_bandwidth(shape, dtype, device, batches, contexts,
                            mixed_batch=3 if quick else MIXED_BATCH, block_size=block_size,
                            timer=timer)
    after = compiled_variants(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "device": name,
        "model": {"name": "kernels", **asdict(shape), "dtype": str(dtype)[6:],
                  "block_size": block_size},
        "workload": {"name": "gpu-kernels-quick" if quick else "gpu-kernels",
                     "batches": list(batches), "contexts": list(contexts),
                     "max_batch": max_batch},
        "started": started,
        "warm_up": {"seconds": warm.seconds, "variants": warm.variants,
                    "compiled_while_timing": {k: n - before.get(k, 0)
                                              for k, n in after.items()}},
        "accuracy": errors,
        "notes": {"timing": "CUDA events, L2 flushed, median" if device.type == "cuda"
                  else "interpreter on the CPU: not a GPU figure"},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m binbaton.bench.gpu_kernels",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU path)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = run(torch.device(args.device), args.quick, DTYPES[args.dtype])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"{result['started'][:10]}-{slug(result['device'])}-"
                       f"{result['workload']['name']}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["accuracy"]:
        print(f"{r['op']:32s} {r['dtype']:9s} max |triton - twin| {r['max_abs_error']:.3g}")
    for r in result["rows"]:
        print(f"batch {r['batch']:4d} ctx {r['context']:5d} {r['lengths']:7s} "
              f"{r['time_us']:10.1f} us {r['achieved_gb_per_s']:8.1f} GB/s "
              f"({100 * r['fraction_of_copy']:5.1f}% of copy)")
    print(f"warm-up {result['warm_up']['seconds']} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
