"""Ahead-of-time compile of every kernel configuration the launchers pick, for sm_80 and
sm_90, without a GPU (binbaton.kernels.aot; ptxas ships in the triton wheel).

This process runs the kernels interpreted (TRITON_INTERPRET=1, set by tests/conftest.py
before triton was imported), and the interpreter's kernels cannot be compiled, so the
compile runs in a subprocess with TRITON_INTERPRET unset. It fails on a compile error,
on shared memory over the arch's limit, and on any register spill (none is left, float32
included). Compiles land in triton's cache: a cold run is the slow one.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from binbaton.kernels import aot

KERNELS = {
    "decode_attention._decode_split_kernel", "decode_attention._decode_merge_kernel",
    "prefill_attention._prefill_kernel", "kv_store._store_kv_kernel",
    "kv_store._rope_store_kv_kernel", "rms_norm._rms_norm_kernel",
    "silu_and_mul._silu_and_mul_kernel",
}


@pytest.mark.slow
def test_every_configuration_compiles_fits_and_does_not_spill(tmp_path):
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "binbaton.kernels.aot", "--json", str(out),
         "--jobs", str(min(4, os.cpu_count() or 1))],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert out.exists(), done.stderr[-3000:]
    results = [aot.Result(**r) for r in json.loads(out.read_text())]
    assert {r.kernel for r in results} == KERNELS
    assert {(r.arch, r.dtype) for r in results} == {
        (arch, dtype) for arch in aot.ARCHS for dtype in aot.DTYPES
    }
    assert {r.label.split()[0] for r in results
            if r.kernel == "prefill_attention._prefill_kernel"} == {
        f"d{d}" for d in aot.HEAD_DIMS
    }
    problems = [f"{r.kernel} {r.dtype} {r.label} sm_{r.arch}: {p}"
                for r in results for p in r.problems()]
    assert not problems, "\n".join(problems)
    assert all(r.registers > 0 for r in results)
    assert done.returncode == 0, done.stdout[-3000:]


def test_jobs_cover_the_matrix_once_per_compile_key():
    jobs = aot.all_jobs()
    keys = [job.key() for job in jobs]
    assert len(keys) == len(set(keys))
    split = [j for j in jobs if j.kernel == "decode_attention._decode_split_kernel"]
    # GQA groups 1-8 are one runtime argument: direct and partial output per dtype and head
    assert len(split) == len(aot.ARCHS) * len(aot.DTYPES) * len(aot.HEAD_DIMS) * 2
    bf16 = next(j for j in split if j.dtype == "bfloat16")
    assert str(bf16.config.constexprs["DOT_DTYPE"]) == "bf16"  # compiled, not interpreted


def test_signature_marks_runtime_arguments_unspecialized():
    from binbaton.kernels import decode_attention
    from triton.runtime.jit import JITFunction

    job = next(j for j in aot.all_jobs(archs=[80], dtypes=["bfloat16"], head_dims=[128])
               if j.kernel == "decode_attention._decode_split_kernel")
    interpreted = decode_attention._decode_split_kernel
    types, attrs = aot.signature(JITFunction(interpreted.fn, **interpreted.kwargs), job)
    names = list(types)
    assert types["q_ptr"] == "*bf16" and types["scale_log2"] == "fp32"
    assert types["PAGE_SIZE"] == "constexpr" and types["group"] == "i32"
    assert (names.index("q_ptr"),) in attrs and (names.index("stride_qb"),) in attrs
    assert (names.index("group"),) not in attrs  # do_not_specialize: GQA 1 is no variant
    assert (names.index("tokens_per_split"),) not in attrs


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, []),
    ({"shared": 166913}, ["shared memory 166913 B over sm_80's 166912 B"]),
    ({"spill_bytes": 8}, ["spills 8 B per thread"]),
    ({"error": "PTXASError: boom"}, ["compile error: PTXASError: boom"]),
])
def test_result_problems(changes, expected):
    fine = dict(kernel="k", label="d128", dtype="bfloat16", arch=80, constexprs="",
                num_warps=4, num_stages=2, shared=166912, registers=128, spill_bytes=0)
    assert aot.Result(**(fine | changes)).problems() == expected


def test_refuses_to_compile_interpreted_kernels():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("this process compiles kernels")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET unset"):
        aot.compile_all(aot.all_jobs(archs=[80], dtypes=["float16"], head_dims=[64])[:1])
