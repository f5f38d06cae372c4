"""Decode-attention kernel benchmark: Triton (paged, split-K) vs torch SDPA over a padded
batch vs the torch twin, batch x context grid, achieved HBM bandwidth next to the
device-to-device copy bandwidth measured in the same run.

Bandwidth counts the bytes the op must move: every sequence's K and V rows, q in, out
back; copy bandwidth counts the read and the write of a large ``Tensor.copy_``. On CUDA
each timed call follows an L2 flush and is timed with CUDA events after warmup; the
median is reported. ``--device cpu --quick`` runs tiny sizes without Triton (twin vs
SDPA) so the code path is testable anywhere; its figures are not GPU figures.

    python -m binbaton.bench.kernels                    # the GPU grid, JSON + PNG
    python -m binbaton.bench.kernels --device cpu --quick --out /tmp/kbench
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from binbaton.bench.results import RESULTS_DIR, now_iso, slug
from binbaton.kernels import reference

SYSTEMS = ("triton", "sdpa-padded", "torch-twin")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
L2_FLUSH_BYTES = 256 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny grid, few iterations")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--batches", default="1,4,16,64,128,256")
    parser.add_argument("--contexts", default="128,512,1024,2048,4096,8192")
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--max-cache-gb", type=float, default=24.0,
                        help="skip grid points whose K/V cache would exceed this")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)


def quick_overrides(args: argparse.Namespace) -> None:
    """Tiny sizes; on the CPU without Triton (it would need the interpreter)."""
    args.batches, args.contexts = "1,3", "16,40"
    args.q_heads, args.kv_heads, args.head_dim, args.block_size = 4, 2, 32, 8
    args.warmup, args.iters = 1, 3
    if args.device == "cpu":
        args.systems = "sdpa-padded,torch-twin"
        args.dtype = "float32"


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# ------------------------------------------------------------------------ timing


class Timer:
    """Median time of a call: CUDA events after an L2 flush, or perf_counter on the CPU."""

    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.device, self.warmup, self.iters = device, warmup, iters
        self.flush = (torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
                      if device.type == "cuda" else None)

    def __call__(self, fn: Callable[[], Any]) -> float:  # seconds
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.flush is None:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
                continue
            self.flush.zero_()
            begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        return statistics.median(times)


def copy_bandwidth(device: torch.device, timer: Timer, quick: bool) -> float:
    """GB/s of a large device-to-device copy, counting the read and the write."""
    nbytes = (16 << 20) if quick else (1 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src))
    return 2 * nbytes / seconds / 1e9


# ------------------------------------------------------------------------ inputs


def decode_inputs(batch: int, context: int, args: argparse.Namespace, device: torch.device,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A paged cache holding every sequence (scattered pages) and its padded dense twin."""
    gen = torch.Generator(device="cpu").manual_seed(batch * 100003 + context)
    bs, hkv, d = args.block_size, args.kv_heads, args.head_dim
    pages = -(-context // bs)
    order = torch.randperm(batch * pages, generator=gen)
    tables = order.view(batch, pages).int().to(device)  # [B, pages]
    k_cache = torch.randn(batch * pages, bs, hkv, d, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    query = torch.randn(batch, args.q_heads, d, dtype=dtype, device=device)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    keys = k_cache[tables.long()].reshape(batch, pages * bs, hkv, d)[:, :context]
    values = v_cache[tables.long()].reshape(batch, pages * bs, hkv, d)[:, :context]
    return {
        "query": query, "k_cache": k_cache, "v_cache": v_cache, "block_tables": tables,
        "seq_lens": seq_lens,
        "k_dense": keys.transpose(1, 2).contiguous(),  # [B, Hkv, L, D]
        "v_dense": values.transpose(1, 2).contiguous(),
        "mask": torch.ones(batch, 1, 1, context, dtype=torch.bool, device=device),
    }


def sdpa_padded(x: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """torch SDPA over a dense [B, Hkv, L, D] cache with a padding mask (native GQA)."""
    q = x["query"].unsqueeze(2)  # [B, Hq, 1, D]
    out = F.scaled_dot_product_attention(q, x["k_dense"], x["v_dense"], attn_mask=x["mask"],
                                         scale=scale, enable_gqa=True)
    return out.squeeze(2)  # [B, Hq, D]


def system_fns(names: list[str], x: dict[str, torch.Tensor],
               scale: float) -> dict[str, Callable[[], torch.Tensor]]:
    paged = (x["query"], x["k_cache"], x["v_cache"], x["block_tables"], x["seq_lens"], scale)
    max_len = int(x["seq_lens"].max())
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    if "triton" in names:
        from binbaton.kernels.triton_ops import decode_attention

        fns["triton"] = lambda: decode_attention(*paged, max_seq_len=max_len)
    if "sdpa-padded" in names:
        fns["sdpa-padded"] = lambda: sdpa_padded(x, scale)
    if "torch-twin" in names:
        fns["torch-twin"] = lambda: reference.decode_attention(*paged)
    return fns


def useful_bytes(x: dict[str, torch.Tensor]) -> int:
    """K and V rows of every sequence, q read, out written."""
    q, k = x["query"], x["k_cache"]
    kv = int(x["seq_lens"].sum()) * k.shape[2] * k.shape[3] * 2 * k.element_size()
    return kv + 2 * q.numel() * q.element_size()


# ------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        quick_overrides(args)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    names = [s for s in args.systems.split(",") if s]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if "triton" in names and device.type != "cuda":
        raise ValueError("the triton system needs CUDA (the interpreter is no benchmark)")
    started = now_iso()
    timer = Timer(device, args.warmup, args.iters)
    copy_gbs = copy_bandwidth(device, timer, args.quick)
    scale = 1.0 / math.sqrt(args.head_dim)
    rows = []
    for batch in parse_ints(args.batches):
        for context in parse_ints(args.contexts):
            cache_gb = (2 * batch * context * args.kv_heads * args.head_dim
                        * torch.finfo(dtype).bits / 8 / 1e9)
            if cache_gb > args.max_cache_gb:
                continue
            x = decode_inputs(batch, context, args, device, dtype)
            nbytes = useful_bytes(x)
            fns = system_fns(names, x, scale)
            expected = reference.decode_attention(x["query"], x["k_cache"], x["v_cache"],
                                                  x["block_tables"], x["seq_lens"], scale)
            for name, fn in fns.items():
                diff = float((fn().float() - expected.float()).abs().max())
                seconds = timer(fn)
                achieved = nbytes / seconds / 1e9
                rows.append({
                    "system": name, "policy": "", "batch": batch, "context": context,
                    "time_us": round(seconds * 1e6, 3), "bytes": nbytes,
                    "achieved_gb_per_s": round(achieved, 6),  # quick runs move only kilobytes
                    "copy_gb_per_s": round(copy_gbs, 2),
                    "fraction_of_copy": round(achieved / copy_gbs, 4),
                    "max_abs_diff_vs_twin": diff,
                })
            del x, fns
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": device_name,
        "model": {"name": "decode-attention", "q_heads": args.q_heads,
                  "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                  "block_size": args.block_size, "dtype": args.dtype},
        "workload": {"name": "decode-attention-quick" if args.quick else "decode-attention",
                     "batches": parse_ints(args.batches),
                     "contexts": parse_ints(args.contexts),
                     "lengths": "every sequence at the full context"},
        "started": started,
        "notes": {"copy_gb_per_s": round(copy_gbs, 2), "warmup": args.warmup,
                  "iters": args.iters,
                  "timing": "CUDA events, L2 flushed, median" if device.type == "cuda"
                  else "perf_counter median (CPU: not a GPU figure)"},
        "rows": rows,
    }


def write(result: dict[str, Any], out_dir: Path) -> Path:
    """bench/results/<day>-<device>-<name>.json and a PNG beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (f"{result['started'][:10]}-{slug(result['device'])}-"
                      f"{slug(result['workload']['name'])}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    return path


def plot(result: dict[str, Any], path: Path) -> Path:
    """Achieved GB/s against context, one line per (system, batch), copy bandwidth dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    systems = sorted({r["system"] for r in rows}, key=SYSTEMS.index)
    fig, axes = plt.subplots(1, len(systems), figsize=(6 * len(systems), 4.8), sharey=True,
                             squeeze=False)
    for ax, system in zip(axes[0], systems, strict=True):
        for batch in sorted({r["batch"] for r in rows}):
            mine = sorted((r for r in rows if r["system"] == system and r["batch"] == batch),
                          key=lambda r: r["context"])
            ax.plot([r["context"] for r in mine], [r["achieved_gb_per_s"] for r in mine],
                    marker="o", label=f"batch {batch}")
        ax.axhline(result["notes"]["copy_gb_per_s"], color="black", linestyle="--",
                   label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(system)
    axes[0][0].set_ylabel("achieved GB/s (K/V + q + out)")
    axes[0][-1].legend(fontsize=8)
    model = result["model"]
    fig.suptitle(f"decode attention, Hq {model['q_heads']} / Hkv {model['kv_heads']}, "
                 f"D {model['head_dim']}, {model['dtype']} — {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    result = run(args)
    path = write(result, args.out)
    for r in result["rows"]:
        print(f"{r['system']:12s} batch {r['batch']:4d} ctx {r['context']:5d} "
              f"{r['time_us']:10.1f} us {r['achieved_gb_per_s']:8.1f} GB/s "
              f"({100 * r['fraction_of_copy']:5.1f}% of copy)")
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m binbaton.bench.kernels",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args(sys.argv[1:])))
