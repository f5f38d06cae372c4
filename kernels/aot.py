"""Ahead-of-time compile of every kernel configuration the launchers pick, for CUDA archs,
without a GPU: shared memory, registers and spills of each.

The configurations come from the launchers' own config functions (``split_config``,
``prefill_config``, ...) over model shapes: dtypes, head sizes, GQA groups, hidden and
intermediate sizes. Jobs with one compile key (the same kernel, constexprs, options,
pointer types and arch) are compiled once. Pointers and the integer arguments triton would
specialize are declared 16-divisible, as the engine's tensors make them; the arguments a
kernel marks ``do_not_specialize`` are plain ``i32``.

Compiling needs triton's compiler, not its interpreter: under ``TRITON_INTERPRET=1``,
``@triton.jit`` turns every kernel (triton's own library functions too) into an
interpreter object when the module is imported, and the two cannot be mixed in one
process. So this runs in a process where TRITON_INTERPRET is unset::

    env -u TRITON_INTERPRET python -m binbaton.kernels.aot --arch 80,90 --jobs 2

(tests/unit/test_kernels_aot.py starts it that way, in a subprocess). ptxas comes with the
triton wheel; compiles land in triton's usual cache, so a second run is quick. Registers
and spill bytes are read from the cubin with the wheel's ``cuobjdump
--dump-resource-usage`` (REG, STACK): a Triton kernel has no local arrays, so its stack
frame is spill space.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import triton
from binbaton.kernels import launch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

# Largest dynamic shared memory a block may opt into (A100 and H100 class parts).
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}
ARCHS = (80, 90)
DTYPES = ("float16", "bfloat16", "float32")
HEAD_DIMS = (64, 80, 96, 128, 256)
GROUPS = tuple(range(1, 9))
HIDDEN_SIZES = (2048, 4096, 8192)  # rms_norm of the residual stream
INTERMEDIATE_SIZES = (5632, 14336)  # silu_and_mul
PAGE_SIZE = 16
NUM_KV_HEADS = 8
FLOAT_ARGS = frozenset({"scale_log2", "eps"})
POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int32: "i32", torch.int64: "i64"}


@dataclass(frozen=True)
class Job:
    kernel: str  # "<module>.<kernel>" under binbaton.kernels
    label: str  # what the configuration serves
    dtype: str  # the model's dtype
    arch: int
    config: launch.KernelConfig
    pointers: tuple[tuple[str, str], ...]  # pointer argument -> element type

    def key(self) -> str:
        constexprs = sorted((k, str(v)) for k, v in self.config.constexprs.items())
        return repr((self.kernel, self.arch, constexprs, self.config.num_warps,
                     self.config.num_stages, sorted(self.pointers)))


@dataclass(frozen=True)
class Result:
    kernel: str
    label: str
    dtype: str
    arch: int
    constexprs: str
    num_warps: int
    num_stages: int
    shared: int = 0  # bytes of dynamic shared memory
    registers: int = 0  # per thread
    spill_bytes: int = 0  # per thread (ptxas stack frame)
    seconds: float = 0.0
    error: str = ""

    def problems(self) -> list[str]:
        """Why this configuration would not run well on its arch (empty: it is fine)."""
        found = []
        if self.error:
            found.append(f"compile error: {self.error}")
        limit = SHARED_MEMORY_LIMIT.get(self.arch)
        if limit is not None and self.shared > limit:
            found.append(f"shared memory {self.shared} B over sm_{self.arch}'s {limit} B")
        if self.spill_bytes:
            found.append(f"spills {self.spill_bytes} B per thread")
        return found


# ------------------------------------------------------------------------ jobs


def _pointers(**types: torch.dtype) -> tuple[tuple[str, str], ...]:
    return tuple((name, POINTER_TYPES[t]) for name, t in types.items())


def attention_jobs(arch: int, dtype: torch.dtype, head_dim: int, group: int) -> Iterator[Job]:
    from binbaton.kernels import decode_attention, prefill_attention

    name, capability = str(dtype)[6:], (arch // 10, arch % 10)
    f32 = torch.float32
    cache = dict(q_ptr=dtype, k_cache_ptr=dtype, v_cache_ptr=dtype,
                 block_tables_ptr=torch.int32, seq_lens_ptr=torch.int32)
    for write_lse in (False, True):
        config = decode_attention.split_config(PAGE_SIZE, group, head_dim, dtype, capability,
                                               False, write_lse)
        out = f32 if write_lse else dtype  # partial outputs, or the output itself
        yield Job("decode_attention._decode_split_kernel",
                  f"d{head_dim} g{group} {'partial' if write_lse else 'direct'}", name, arch,
                  config, _pointers(**cache, out_ptr=out, lse_ptr=out))
    yield Job("decode_attention._decode_merge_kernel", f"d{head_dim}", name, arch,
              decode_attention.merge_config(head_dim),
              _pointers(part_ptr=f32, lse_ptr=f32, out_ptr=dtype))
    yield Job("prefill_attention._prefill_kernel", f"d{head_dim} g{group}", name, arch,
              prefill_attention.prefill_config(head_dim, dtype, capability, False),
              _pointers(q_ptr=dtype, k_ptr=dtype, v_ptr=dtype, out_ptr=dtype,
                        cu_seqlens_ptr=torch.int32))


def cache_jobs(arch: int, dtype: torch.dtype, head_dim: int) -> Iterator[Job]:
    from binbaton.kernels import kv_store

    name, i64 = str(dtype)[6:], torch.int64
    kv = dict(key_ptr=dtype, value_ptr=dtype, k_cache_ptr=dtype, v_cache_ptr=dtype)
    yield Job("kv_store._store_kv_kernel", f"d{head_dim}", name, arch,
              kv_store.store_config(head_dim, PAGE_SIZE), _pointers(**kv, slots_ptr=i64))
    yield Job("kv_store._rope_store_kv_kernel", f"d{head_dim}", name, arch,
              kv_store.rope_config(head_dim, PAGE_SIZE),
              _pointers(query_ptr=dtype, **kv, slots_ptr=i64, positions_ptr=i64,
                        cos_ptr=torch.float32, sin_ptr=torch.float32))


def norm_jobs(arch: int, dtype: torch.dtype, hidden_size: int,
              has_residual: bool) -> Iterator[Job]:
    from binbaton.kernels import rms_norm

    tensors = dict.fromkeys(("x_ptr", "residual_ptr", "weight_ptr", "out_ptr",
                             "residual_out_ptr"), dtype)
    yield Job("rms_norm._rms_norm_kernel",
              f"h{hidden_size}{' residual' if has_residual else ''}", str(dtype)[6:], arch,
              rms_norm.rms_norm_config(hidden_size, has_residual), _pointers(**tensors))


def activation_jobs(arch: int, dtype: torch.dtype, intermediate: int) -> Iterator[Job]:
    from binbaton.kernels import silu_and_mul

    yield Job("silu_and_mul._silu_and_mul_kernel", f"i{intermediate}", str(dtype)[6:], arch,
              silu_and_mul.silu_and_mul_config(intermediate),
              _pointers(x_ptr=dtype, out_ptr=dtype))


def all_jobs(archs: Iterable[int] = ARCHS, dtypes: Iterable[str] = DTYPES,
             head_dims: Iterable[int] = HEAD_DIMS, groups: Iterable[int] = GROUPS) -> list[Job]:
    """Every configuration, one job per compile key (the first label that needs it)."""
    jobs: dict[str, Job] = {}
    for arch in archs:
        for dtype in (getattr(torch, d) for d in dtypes):
            found: list[Job] = []
            for head_dim in head_dims:
                for group in groups:
                    found += attention_jobs(arch, dtype, head_dim, group)
                found += cache_jobs(arch, dtype, head_dim)
                found += norm_jobs(arch, dtype, head_dim, False)  # q/k norm
            for hidden_size in HIDDEN_SIZES:
                for has_residual in (False, True):
                    found += norm_jobs(arch, dtype, hidden_size, has_residual)
            for intermediate in INTERMEDIATE_SIZES:
                found += activation_jobs(arch, dtype, intermediate)
            for job in found:
                jobs.setdefault(job.key(), job)
    return list(jobs.values())


# ------------------------------------------------------------------------ compiling


def _kernel(name: str) -> JITFunction:
    module, attr = name.split(".")
    fn = getattr(importlib.import_module(f"binbaton.kernels.{module}"), attr)
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{name} is interpreted: run with TRITON_INTERPRET unset")
    return fn


def signature(fn: JITFunction, job: Job) -> tuple[dict[str, str], dict[tuple[int], Any]]:
    """Argument types and the 16-divisibility triton would find on the engine's tensors."""
    pointers = dict(job.pointers)
    types: dict[str, str] = {}
    attrs: dict[tuple[int], Any] = {}
    divisible = [["tt.divisibility", 16]]
    for i, param in enumerate(fn.params):
        if param.is_constexpr:
            types[param.name] = "constexpr"
        elif param.name.endswith("_ptr"):
            types[param.name] = "*" + pointers[param.name]
            attrs[(i,)] = divisible
        elif param.name in FLOAT_ARGS:
            types[param.name] = "fp32"
        else:
            types[param.name] = "i32"
            if not param.do_not_specialize:
                attrs[(i,)] = divisible
    return types, attrs


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) per thread of the cubin's one kernel."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump output: {text!r}")
    return int(found[1]), int(found[2])


def compile_job(job: Job) -> Result:
    config = job.config
    described = functools.partial(
        Result, kernel=job.kernel, label=job.label, dtype=job.dtype, arch=job.arch,
        constexprs=" ".join(f"{k}={v}" for k, v in config.constexprs.items()),
        num_warps=config.num_warps, num_stages=config.num_stages)
    start = time.perf_counter()
    try:
        fn = _kernel(job.kernel)
        types, attrs = signature(fn, job)
        source = ASTSource(fn=fn, signature=types, constexprs=config.constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", job.arch, 32),
                                  options=dict(num_warps=config.num_warps,
                                               num_stages=config.num_stages))
        registers, stack = resource_usage(compiled.asm["cubin"])
    except Exception as error:  # reported per configuration, the run goes on
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return described(seconds=time.perf_counter() - start,
                         error=f"{type(error).__name__}: {first_line}")
    return described(shared=compiled.metadata.shared, registers=registers, spill_bytes=stack,
                     seconds=round(time.perf_counter() - start, 2))


def compile_all(jobs: list[Job], processes: int = 1) -> list[Result]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the ahead-of-time compile needs TRITON_INTERPRET unset")
    if processes <= 1:
        return [compile_job(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(compile_job, jobs, chunksize=1)


# ------------------------------------------------------------------------ report


def table(results: list[Result]) -> str:
    lines = [f"{'kernel':38s} {'dtype':8s} {'config':18s} {'arch':>4s} {'warps':>5s} "
             f"{'stages':>6s} {'shared KB':>9s} {'regs':>4s} {'spill B':>7s} {'s':>5s}  status"]
    for r in sorted(results, key=lambda r: (r.kernel, r.dtype, r.label, r.arch)):
        status = "; ".join(r.problems()) or "ok"
        lines.append(f"{r.kernel:38s} {r.dtype:8s} {r.label:18s} {r.arch:4d} {r.num_warps:5d} "
                     f"{r.num_stages:6d} {r.shared / 1024:9.1f} {r.registers:4d} "
                     f"{r.spill_bytes:7d} {r.seconds:5.1f}  {status}")
    return "\n".join(lines)


def _csv(text: str, kind: type = str) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m binbaton.kernels.aot",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    jobs = all_jobs(_csv(args.arch, int), _csv(args.dtypes), _csv(args.head_dims, int))
    results = compile_all(jobs, args.jobs)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    bad = [r for r in results if r.problems()]
    print(f"{len(results)} configurations, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
