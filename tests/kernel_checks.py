"""Kernel checks of tests/unit/test_kernels.py, run on every device the suite covers
(the CPU under the Triton interpreter, CUDA with compiled kernels); imported as a plain
module (pytest's ``pythonpath`` holds tests/).

Each check builds fresh random inputs (never zeros), poisons every output before the
launch (NaN, or NaN cache rows that no sequence owns), runs the Triton op and the torch
twin, and compares both with an independent float64 reference written here.
This module sets no environment: whether kernels are interpreted is the caller's choice.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from binbaton.kernels import reference

# (atol, rtol) against the float64 reference and between kernel and twin. fp16/bf16
# round the output once (bf16 under the interpreter truncates: up to 1 ulp = 2^-8
# relative), and on the GPU also round the softmax probabilities to fp16/bf16 for P @ V.
ATTENTION_TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2.5e-2, 2.5e-2),
}
ROPE_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
NORM_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
ACTIVATION_TOL = NORM_TOL  # one float32 computation, rounded once to the output dtype


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=torch.float32)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x)  # never an exact zero
    return x.to(dtype=dtype, device=device)


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor,
                 tol: tuple[float, float]) -> None:
    atol, rtol = tol
    actual64, expected64 = actual.double().cpu(), expected.double().cpu()
    assert not torch.isnan(actual64).any(), f"{name}: NaN (an unwritten element?)"
    err = (actual64 - expected64).abs()
    bound = atol + rtol * expected64.abs()
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), (
        f"{name}: max |err| {float(err.max()):.3g}, worst at flat index {worst}: "
        f"{float(actual64.flatten()[worst]):.6g} vs {float(expected64.flatten()[worst]):.6g}"
    )


# ---------------------------------------------------------------- decode attention


@dataclass(frozen=True)
class DecodeCase:
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    max_len: int
    page_size: int
    dtype: torch.dtype
    num_splits: int | None = None  # None: the launcher's heuristic

    def __str__(self) -> str:
        return (f"b{self.batch}-h{self.q_heads}/{self.kv_heads}-d{self.head_dim}-"
                f"l{self.max_len}-p{self.page_size}-{str(self.dtype)[6:]}-s{self.num_splits}")


def paged_inputs(case: DecodeCase, device: str, seed: int = 0):
    """Random q and a shared paged cache; every cache row no sequence owns is NaN."""
    gen = _gen(seed)
    lens = torch.randint(1, case.max_len + 1, (case.batch,), generator=gen)
    lens[0] = case.max_len
    if case.batch > 1:
        lens[1] = 1
    pages_per_seq = -(-lens // case.page_size)
    max_pages = -(-case.max_len // case.page_size) + 2  # spare columns, never read
    num_pages = int(pages_per_seq.sum()) + 1  # + one NaN page for the spare columns
    order = torch.randperm(num_pages - 1, generator=gen)  # scattered pages
    tables = torch.full((case.batch, max_pages), num_pages - 1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq.tolist()):
        tables[b, :n] = order[used:used + n].int()
        used += n
    shape = (num_pages, case.page_size, case.kv_heads, case.head_dim)
    k_cache = _randn(gen, *shape, dtype=torch.float32, device="cpu")
    v_cache = _randn(gen, *shape, dtype=torch.float32, device="cpu")
    owned = torch.zeros(num_pages * case.page_size, dtype=torch.bool)
    for b, n in enumerate(lens.tolist()):
        t = torch.arange(n)
        owned[tables[b, t // case.page_size].long() * case.page_size + t % case.page_size] = True
    owned = owned.view(num_pages, case.page_size)
    k_cache[~owned] = float("nan")
    v_cache[~owned] = float("nan")
    query = _randn(gen, case.batch, case.q_heads, case.head_dim, dtype=case.dtype,
                   device=device)
    return (query, k_cache.to(case.dtype).to(device), v_cache.to(case.dtype).to(device),
            tables.to(device), lens.int().to(device))


def decode_f64(query, k_cache, v_cache, tables, lens, scale) -> torch.Tensor:
    """Per sequence and head: gather its slots, softmax(q k^T) v in float64."""
    batch, q_heads, head_dim = query.shape
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    flat_k = k_cache.double().cpu().reshape(-1, kv_heads, head_dim)
    flat_v = v_cache.double().cpu().reshape(-1, kv_heads, head_dim)
    out = torch.empty(batch, q_heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        t = torch.arange(int(lens[b]))
        slots = tables[b].cpu().long()[t // page_size] * page_size + t % page_size
        for h in range(q_heads):
            keys, values = flat_k[slots, h // group], flat_v[slots, h // group]  # [L, D]
            weights = torch.softmax(keys @ query[b, h].double().cpu() * scale, dim=0)
            out[b, h] = weights @ values
    return out


def check_decode(case: DecodeCase, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    query, k_cache, v_cache, tables, lens = paged_inputs(case, device, seed)
    scale = 1.0 / math.sqrt(case.head_dim)
    expected = decode_f64(query, k_cache, v_cache, tables, lens, scale)
    out = torch.full_like(query, float("nan"))
    got = triton_ops.decode_attention(query, k_cache, v_cache, tables, lens, scale,
                                      num_splits=case.num_splits, out=out)
    assert got.data_ptr() == out.data_ptr()
    twin = reference.decode_attention(query, k_cache, v_cache, tables, lens, scale)
    tol = ATTENTION_TOL[case.dtype]
    assert_close(f"triton {case}", got, expected, tol)
    assert_close(f"twin {case}", twin, expected, tol)
    assert_close(f"triton vs twin {case}", got, twin, tol)


# ---------------------------------------------------------------- prefill attention


@dataclass(frozen=True)
class PrefillCase:
    lens: tuple[int, ...]
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def __str__(self) -> str:
        lens = ",".join(map(str, self.lens)) if len(self.lens) <= 4 else f"{len(self.lens)}seqs"
        return (f"l{lens}-h{self.q_heads}/{self.kv_heads}-d{self.head_dim}-"
                f"{str(self.dtype)[6:]}")


def prefill_f64(query, key, value, cu_seqlens, scale) -> torch.Tensor:
    """Per sequence and head: masked softmax with an explicit lower-triangular mask."""
    q_heads, kv_heads = query.shape[1], key.shape[1]
    group = q_heads // kv_heads
    q, k, v = query.double().cpu(), key.double().cpu(), value.double().cpu()
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        n = end - start
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        for h in range(q_heads):
            scores = q[start:end, h] @ k[start:end, h // group].T * scale  # [L, L]
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[start:end, h] = torch.softmax(scores, dim=-1) @ v[start:end, h // group]
    return out


def check_prefill(case: PrefillCase, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    gen = _gen(seed)
    total = sum(case.lens)
    query = _randn(gen, total, case.q_heads, case.head_dim, dtype=case.dtype, device=device)
    key = _randn(gen, total, case.kv_heads, case.head_dim, dtype=case.dtype, device=device)
    value = _randn(gen, total, case.kv_heads, case.head_dim, dtype=case.dtype, device=device)
    cu = torch.tensor([0, *torch.tensor(case.lens).cumsum(0).tolist()], dtype=torch.int32,
                      device=device)
    scale = 1.0 / math.sqrt(case.head_dim)
    expected = prefill_f64(query, key, value, cu, scale)
    out = torch.full_like(query, float("nan"))
    got = triton_ops.prefill_attention(query, key, value, cu, scale, out=out)
    assert got.data_ptr() == out.data_ptr()
    twin = reference.prefill_attention(query, key, value, cu, scale)
    tol = ATTENTION_TOL[case.dtype]
    assert_close(f"triton {case}", got, expected, tol)
    assert_close(f"twin {case}", twin, expected, tol)
    assert_close(f"triton vs twin {case}", got, twin, tol)


# ---------------------------------------------------------------- KV insertion


@dataclass(frozen=True)
class StoreCase:
    tokens: int
    kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype
    cache_dtype: torch.dtype
    padding: bool = False  # some slots are -1 (skipped)
    strided: bool = False  # key/value are views into a fused qkv projection

    def __str__(self) -> str:
        return (f"t{self.tokens}-h{self.kv_heads}-d{self.head_dim}-p{self.page_size}-"
                f"{str(self.dtype)[6:]}->{str(self.cache_dtype)[6:]}"
                f"{'-pad' if self.padding else ''}{'-strided' if self.strided else ''}")


def store_inputs(case: StoreCase, device: str, seed: int, q_heads: int = 0):
    """(query, key, value, NaN caches, slots): distinct random slots, maybe some -1."""
    gen = _gen(seed)
    width = (q_heads + 2 * case.kv_heads) * case.head_dim
    rows = width * (2 if case.strided else 1)
    qkv = _randn(gen, case.tokens, rows, dtype=case.dtype, device=device)[:, :width]
    q_end = q_heads * case.head_dim
    k_end = q_end + case.kv_heads * case.head_dim
    query = qkv[:, :q_end].view(case.tokens, q_heads, case.head_dim)
    key = qkv[:, q_end:k_end].view(case.tokens, case.kv_heads, case.head_dim)
    value = qkv[:, k_end:].view(case.tokens, case.kv_heads, case.head_dim)
    if not case.strided:
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    num_pages = -(-2 * case.tokens // case.page_size) + 1
    shape = (num_pages, case.page_size, case.kv_heads, case.head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=case.cache_dtype, device=device)
    v_cache = torch.full(shape, float("nan"), dtype=case.cache_dtype, device=device)
    slots = torch.randperm(num_pages * case.page_size, generator=gen)[:case.tokens]
    if case.padding:
        slots[::3] = -1
    return query, key, value, k_cache, v_cache, slots.to(device)


def stored_f64(key, value, slots, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """The expected caches: NaN everywhere except each kept token's slot, row by row."""
    k_exp = torch.full(shape, float("nan"), dtype=torch.float64)
    v_exp = torch.full(shape, float("nan"), dtype=torch.float64)
    page_size = shape[1]
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            k_exp[slot // page_size, slot % page_size] = key[t].double().cpu()
            v_exp[slot // page_size, slot % page_size] = value[t].double().cpu()
    return k_exp, v_exp


def assert_cache(name: str, cache: torch.Tensor, expected: torch.Tensor,
                 tol: tuple[float, float] = (0.0, 0.0)) -> None:
    """NaN exactly where expected (untouched rows) and close elsewhere."""
    got = cache.double().cpu()
    assert torch.equal(got.isnan(), expected.isnan()), f"{name}: wrong slots written"
    keep = ~expected.isnan()
    assert_close(name, got[keep], expected[keep], tol)


def check_store(case: StoreCase, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    _, key, value, k_cache, v_cache, slots = store_inputs(case, device, seed)
    k_twin, v_twin = k_cache.clone(), v_cache.clone()
    triton_ops.store_kv(key, value, k_cache, v_cache, slots)
    reference.store_kv(key, value, k_twin, v_twin, slots)
    # expected: the inputs rounded once to the cache dtype, exactly
    k_exp, v_exp = stored_f64(key.to(case.cache_dtype), value.to(case.cache_dtype), slots,
                              tuple(k_cache.shape))
    for name, got, exp in (("k", k_cache, k_exp), ("v", v_cache, v_exp),
                           ("k twin", k_twin, k_exp), ("v twin", v_twin, v_exp)):
        tol = (0.0, 0.0)
        if case.cache_dtype == torch.bfloat16 and case.dtype != torch.bfloat16:
            tol = (0.0, 2**-7)  # the interpreter truncates where torch rounds to nearest
        assert_cache(f"{name} {case}", got, exp, tol)


def rope_tables(max_pos: int, head_dim: int, base: float = 10000.0):
    """cos/sin [max_pos, D] in the Hugging Face layout (the frequencies repeat twice)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().float(), emb.sin().float(), freqs


def rope_f64(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as a complex rotation of the pairs (i, i + D/2), in float64."""
    half = x.shape[-1] // 2
    x64 = x.double().cpu()
    pairs = torch.complex(x64[..., :half], x64[..., half:])  # [T, H, D/2]
    angle = freqs[positions.cpu().long()][:, None, :]  # [T, 1, D/2]
    rotated = pairs * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((rotated.real, rotated.imag), dim=-1)


def check_rope_store(case: StoreCase, q_heads: int, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    query, key, value, k_cache, v_cache, slots = store_inputs(case, device, seed, q_heads)
    gen = _gen(seed + 1)
    max_pos = 4 * case.tokens + 8
    positions = torch.randint(0, max_pos, (case.tokens,), generator=gen).to(device)
    cos, sin, freqs = rope_tables(max_pos, case.head_dim)
    cos, sin = cos.to(device), sin.to(device)
    q_exp, k_exp = rope_f64(query, positions, freqs), rope_f64(key, positions, freqs)
    q_twin, k_twin = query.clone(), key.clone()
    kc_twin, vc_twin = k_cache.clone(), v_cache.clone()
    triton_ops.rope_store_kv(query, key, value, k_cache, v_cache, slots, positions, cos, sin)
    reference.rope_store_kv(q_twin, k_twin, value, kc_twin, vc_twin, slots, positions, cos,
                            sin)
    tol = ROPE_TOL[case.dtype]
    assert_close(f"q {case}", query, q_exp, tol)
    assert_close(f"k {case}", key, k_exp, tol)
    assert_close(f"q twin {case}", q_twin, q_exp, tol)
    assert_close(f"k twin {case}", k_twin, k_exp, tol)
    assert_close(f"q vs twin {case}", query, q_twin, tol)
    # the cache holds the rotated key exactly as the key tensor now holds it
    kc_exp, vc_exp = stored_f64(key.to(case.cache_dtype), value.to(case.cache_dtype), slots,
                                tuple(k_cache.shape))
    assert_cache(f"k cache {case}", k_cache, kc_exp)
    assert_cache(f"v cache {case}", v_cache, vc_exp)
    assert_cache(f"k cache twin {case}", kc_twin, kc_exp, tol)


# ---------------------------------------------------------------- RMSNorm


@dataclass(frozen=True)
class NormCase:
    shape: tuple[int, ...]
    dtype: torch.dtype
    weight_dtype: torch.dtype
    residual: bool

    def __str__(self) -> str:
        return (f"{'x'.join(map(str, self.shape))}-{str(self.dtype)[6:]}-"
                f"w{str(self.weight_dtype)[6:]}{'-res' if self.residual else ''}")


def rms_norm_f64(x, weight, eps, residual):
    """(normed, new_residual) in float64; the sum x + residual is rounded to x's dtype."""
    hidden = x if residual is None else (x.double() + residual.double()).to(x.dtype)
    h = hidden.double().cpu()
    normed = h / torch.sqrt((h * h).mean(-1, keepdim=True) + eps)
    return weight.double().cpu() * normed, hidden


def check_rms_norm(case: NormCase, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    gen = _gen(seed)
    hidden_size = case.shape[-1]
    x = _randn(gen, *case.shape, dtype=case.dtype, device=device)
    weight = _randn(gen, hidden_size, dtype=case.weight_dtype, device=device)
    residual = (_randn(gen, *case.shape, dtype=case.dtype, device=device)
                if case.residual else None)
    eps = 1e-6
    out_dtype = torch.promote_types(case.weight_dtype, case.dtype)
    out = torch.full(case.shape, float("nan"), dtype=out_dtype, device=device)
    residual_out = torch.full_like(x, float("nan")) if case.residual else None
    normed, new_residual = triton_ops.rms_norm(x, weight, eps, residual, out=out,
                                               residual_out=residual_out)
    twin_normed, twin_residual = reference.rms_norm(x, weight, eps, residual)
    exp_normed, exp_residual = rms_norm_f64(x, weight, eps, residual)
    assert normed.dtype == twin_normed.dtype == out_dtype
    assert new_residual.dtype == twin_residual.dtype == case.dtype
    tol = max(NORM_TOL[out_dtype], NORM_TOL[case.dtype])  # the looser of the two roundings
    assert_close(f"normed {case}", normed, exp_normed, tol)
    assert_close(f"twin normed {case}", twin_normed, exp_normed, tol)
    assert_close(f"normed vs twin {case}", normed, twin_normed, tol)
    if not case.residual:
        assert new_residual is x
        return
    # x + residual is one rounding of an exact sum: equal, bar the interpreter's bf16
    # truncation (at most 1 ulp)
    res_tol = (0.0, 2**-7) if case.dtype == torch.bfloat16 else (0.0, 0.0)
    assert_close(f"residual {case}", new_residual, exp_residual, res_tol)
    assert_close(f"twin residual {case}", twin_residual, exp_residual, (0.0, 0.0))


# ---------------------------------------------------------------- SiLU and multiply


@dataclass(frozen=True)
class ActivationCase:
    tokens: int
    intermediate: int
    dtype: torch.dtype
    strided: bool = False  # x is a row-strided view (a wider projection output)
    spread: float = 1.0  # input scale: large values reach exp's overflow

    def __str__(self) -> str:
        return (f"t{self.tokens}-i{self.intermediate}-{str(self.dtype)[6:]}"
                f"{'-strided' if self.strided else ''}"
                f"{f'-x{self.spread:g}' if self.spread != 1 else ''}")


def silu_and_mul_f64(x: torch.Tensor) -> torch.Tensor:
    """gate / (1 + e^-gate) * up in float64."""
    gate, up = x.double().cpu().chunk(2, dim=-1)
    return gate / (1 + torch.exp(-gate)) * up


def check_silu_and_mul(case: ActivationCase, device: str, seed: int = 0) -> None:
    from binbaton.kernels import triton_ops

    gen = _gen(seed)
    width = 2 * case.intermediate
    x = _randn(gen, case.tokens, width + (7 if case.strided else 0), dtype=torch.float32,
               device="cpu")
    x = (x * case.spread).to(case.dtype).to(device)[:, :width]
    expected = silu_and_mul_f64(x)
    out = torch.full((case.tokens, case.intermediate), float("nan"), dtype=case.dtype,
                     device=device)
    got = triton_ops.silu_and_mul(x, out=out)
    assert got.data_ptr() == out.data_ptr()
    allocated = triton_ops.silu_and_mul(x)
    assert allocated.dtype == case.dtype and allocated.shape == out.shape
    twin_out = torch.full_like(out, float("nan"))
    twin = reference.silu_and_mul(x, out=twin_out)
    assert twin.data_ptr() == twin_out.data_ptr()
    assert torch.equal(reference.silu_and_mul(x), twin)
    tol = ACTIVATION_TOL[case.dtype]
    assert_close(f"triton {case}", got, expected, tol)
    assert_close(f"triton allocated {case}", allocated, got, (0.0, 0.0))
    assert_close(f"twin {case}", twin, expected, tol)
    assert_close(f"triton vs twin {case}", got, twin, tol)
