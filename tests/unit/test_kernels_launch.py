"""The launchers' own behaviour: compile variants, checks once per argument signature,
the tile tables (their attention is computed under the interpreter only).

``CompileKeys`` stands in for a kernel: it runs nothing and records, for every launch,
the key under which triton's JIT would cache a compiled kernel for an sm_90 target (the
JIT's own argument binder: constexprs, options, pointer dtypes and alignment, integers
equal to 1 or divisible by 16). Every distinct key is one compile on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from binbaton.kernels import (
    decode_attention,
    kv_store,
    launch,
    prefill_attention,
    rms_norm,
    silu_and_mul,
    triton_ops,
)

KERNELS = {
    decode_attention: ("_decode_split_kernel", "_decode_merge_kernel"),
    prefill_attention: ("_prefill_kernel",),
    kv_store: ("_store_kv_kernel", "_rope_store_kv_kernel"),
    rms_norm: ("_rms_norm_kernel",),
    silu_and_mul: ("_silu_and_mul_kernel",),
}

INTERPRETED = launch.is_interpreted(decode_attention._decode_split_kernel)


class CompileKeys:
    """Records the JIT cache key of each launch instead of running the kernel."""

    def __init__(self, kernel):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        jit = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn,
                                                                          **kernel.kwargs)
        backend = make_backend(GPUTarget("cuda", 90, 32))
        self.binder = create_function_from_signature(jit.signature, jit.params, backend)
        self.keys: set[str] = set()
        self.launches = 0

    def __getitem__(self, grid):
        from triton.runtime.jit import compute_cache_key

        def launch(*args, **kwargs):
            _, specialization, options = self.binder(*args, **kwargs)
            self.keys.add(compute_cache_key({}, specialization, options))
            self.launches += 1

        return launch


@pytest.fixture
def compile_keys(monkeypatch) -> dict[str, CompileKeys]:
    recorders = {}
    for module, names in KERNELS.items():
        for name in names:
            recorders[name] = CompileKeys(getattr(module, name))
            monkeypatch.setattr(module, name, recorders[name])
    return recorders


class TinyModel:
    """Shapes of one engine layer (GQA, q/k norm, fused gate_up), float16 tensors."""

    hidden, q_heads, kv_heads, head_dim, intermediate, page = 256, 8, 2, 64, 512, 16

    def __init__(self, num_pages: int = 64):
        self.dtype = torch.float16
        self.k_cache = self.randn(num_pages, self.page, self.kv_heads, self.head_dim)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.cos = torch.randn(4096, self.head_dim)
        self.sin = torch.randn(4096, self.head_dim)
        self.norm_weight = self.randn(self.hidden)
        self.qk_weight = self.randn(self.head_dim)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape).to(self.dtype)

    def layer(self, tokens: int, positions: torch.Tensor) -> torch.Tensor:
        """Norms, q/k norm, rope + cache store, activation of ``tokens`` packed tokens."""
        hidden, eps = self.randn(tokens, self.hidden), 1e-6
        _, residual = triton_ops.rms_norm(hidden, self.norm_weight, eps)
        triton_ops.rms_norm(hidden, self.norm_weight, eps, residual)
        qkv = self.randn(tokens, (self.q_heads + 2 * self.kv_heads) * self.head_dim)
        q, k, v = qkv.split([self.q_heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = q.view(tokens, self.q_heads, self.head_dim)
        k = k.view(tokens, self.kv_heads, self.head_dim)
        v = v.view(tokens, self.kv_heads, self.head_dim)
        q, _ = triton_ops.rms_norm(q, self.qk_weight, eps)
        k, _ = triton_ops.rms_norm(k, self.qk_weight, eps)
        slots = positions % (self.k_cache.shape[0] * self.page)
        triton_ops.rope_store_kv(q, k, v, self.k_cache, self.v_cache, slots, positions,
                                 self.cos, self.sin)
        triton_ops.silu_and_mul(self.randn(tokens, 2 * self.intermediate))
        return q

    def decode_step(self, batch: int, seq_len: int) -> None:
        positions = torch.full((batch,), seq_len - 1)
        q = self.layer(batch, positions)
        width = -(-seq_len // self.page)  # the engine's tables are as wide as the longest
        tables = torch.randint(0, self.k_cache.shape[0], (batch, width), dtype=torch.int32)
        seq_lens = torch.randint(1, seq_len + 1, (batch,), dtype=torch.int32)
        seq_lens[0] = seq_len
        triton_ops.decode_attention(q, self.k_cache, self.v_cache, tables, seq_lens,
                                    self.head_dim**-0.5, max_seq_len=seq_len)

    def prefill_step(self, lens: list[int]) -> None:
        positions = torch.cat([torch.arange(n) for n in lens])
        q = self.layer(len(positions), positions)
        k = self.randn(len(positions), self.kv_heads, self.head_dim)
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        triton_ops.prefill_attention(q, k, k, cu, self.head_dim**-0.5, max_seqlen=max(lens))
        triton_ops.store_kv(k, k, self.k_cache, self.v_cache, positions)


def test_batch_and_length_sweeps_compile_one_variant_per_kernel(compile_keys):
    model = TinyModel()
    for batch in range(1, 257):
        model.decode_step(batch, seq_len=1 + (batch * 397) % 2000)
    for count in range(1, 9):
        model.prefill_step([1 + (count * 53 + i * 17) % 300 for i in range(count)])
    variants = {name: len(r.keys) for name, r in compile_keys.items()}
    assert compile_keys["_decode_merge_kernel"].launches > 0  # both decode paths ran
    assert variants == {
        "_decode_split_kernel": 2,  # output written directly, or partials for the merge
        "_decode_merge_kernel": 1,
        "_prefill_kernel": 1,
        "_store_kv_kernel": 1,
        "_rope_store_kv_kernel": 1,
        "_rms_norm_kernel": 3,  # hidden size with and without residual, head size
        "_silu_and_mul_kernel": 1,
    }


def test_checks_run_once_per_signature(monkeypatch, compile_keys):
    checked = []
    check = decode_attention._check

    def counting_check(*args):
        checked.append(tuple(args[0].shape))
        return check(*args)

    monkeypatch.setattr(decode_attention, "_check", counting_check)
    launch.clear_plans()
    model = TinyModel()
    for _ in range(3):
        model.decode_step(4, seq_len=100)
    assert checked == [(4, 8, 64)]
    model.decode_step(5, seq_len=100)
    assert checked == [(4, 8, 64), (5, 8, 64)]
    assert compile_keys["_decode_split_kernel"].launches == 4


def test_plan_cache_is_bounded():
    cache = launch.PlanCache(limit=3)
    made = []
    for key in [1, 2, 3, 1, 4, 5, 1]:
        cache.get(key, lambda k=key: made.append(k) or k)
    assert made == [1, 2, 3, 4, 5, 1]  # 4 filled it: it started over, so 1 came back
    assert len(cache.plans) <= 3


@pytest.fixture
def capability(request, monkeypatch):
    """Interpret with the tiles the table picks for ``request.param`` (a capability)."""
    monkeypatch.setattr(launch, "INTERPRETER_CAPABILITY", request.param)
    launch.clear_plans()
    yield request.param
    launch.clear_plans()


@pytest.mark.skipif(not INTERPRETED, reason="runs the kernels on the CPU (interpreter)")
@pytest.mark.parametrize("capability", [(8, 0), (9, 0)], indirect=True, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [80, 256])
def test_every_tile_of_the_tables_computes_attention(capability, dtype, head_dim):
    """Each arch's prefill and decode tiles, interpreted, against float64 (the main suite
    runs the default capability's tiles; these are the others, and head size 256)."""
    import kernel_checks as kc

    prefill_tiles = prefill_attention.prefill_tiles(launch.pad(head_dim, 16), dtype,
                                                    capability)
    kc.check_prefill(kc.PrefillCase((37, 5, prefill_tiles.block_m + 3), 4, 2, head_dim,
                                    dtype), "cpu")
    block_n = decode_attention.decode_tiles(launch.pad(head_dim, 16), dtype,
                                            capability).block_n
    kc.check_decode(kc.DecodeCase(3, 4, 2, head_dim, 2 * block_n + 5, 16, dtype,
                                  num_splits=2), "cpu")


def test_tile_tables():
    """Powers of two, dot dimensions of at least 16, float32 never wider than half
    precision, sm_80 tiles no larger than sm_90's."""
    for capability in [(8, 0), (8, 6), (8, 9), (9, 0)]:
        for head_pad in (64, 128, 256):
            half = prefill_attention.prefill_tiles(head_pad, torch.bfloat16, capability)
            full = prefill_attention.prefill_tiles(head_pad, torch.float32, capability)
            for tiles in (half, full):
                for size in (tiles.block_m, tiles.block_n, tiles.num_warps):
                    assert size & (size - 1) == 0
                assert min(tiles.block_m, tiles.block_n) >= 16 and tiles.num_stages >= 1
            assert full.block_m * full.block_n <= half.block_m * half.block_n
            hopper = prefill_attention.prefill_tiles(head_pad, torch.bfloat16, (9, 0))
            assert half.block_m * half.block_n <= hopper.block_m * hopper.block_n
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                decode = decode_attention.decode_tiles(head_pad, dtype, capability)
                assert decode.block_n >= 16 and decode.block_n & (decode.block_n - 1) == 0


# ---- plans: what a repeated signature reuses ------------------------------------------------


def _strided_rows(tokens: int, heads: int, dim: int) -> torch.Tensor:
    """[tokens, heads, dim] rows ``2 * heads * dim`` apart: not a view as [tokens * heads,
    dim] (rms_norm must copy), a view of its rows per token (the other ops read it so)."""
    return torch.randn(tokens, 2 * heads, dim)[:, :heads]


@pytest.mark.skipif(not INTERPRETED, reason="runs the kernels on the CPU (interpreter)")
def test_plans_reused_across_new_data_compute_as_the_reference():
    """Each op twice per signature with fresh data, contiguous and strided: the second call
    runs on the plan the first stored (its grid, strides, split geometry), and both match
    the torch twins."""
    from binbaton.kernels import reference

    launch.clear_plans()
    tokens, heads, dim, page = 5, 2, 8, 4
    for _ in range(2):
        for x in (torch.randn(tokens, heads, dim), _strided_rows(tokens, heads, dim)):
            weight, residual = torch.randn(dim), torch.randn(tokens, heads, dim)
            for res in (None, residual):
                got = triton_ops.rms_norm(x, weight, 1e-6, res)
                want = reference.rms_norm(x, weight, 1e-6, res)
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w)
            gate_up = torch.randn(tokens, 2 * 24)
            torch.testing.assert_close(triton_ops.silu_and_mul(gate_up),
                                       reference.silu_and_mul(gate_up))

            caches = [torch.zeros(8, page, heads, dim) for _ in range(4)]
            slots, positions = torch.randperm(32)[:tokens], torch.randint(0, 64, (tokens,))
            cos, sin = torch.randn(64, dim), torch.randn(64, dim)
            q, k, v = x.clone(), torch.randn(tokens, heads, dim), torch.randn(tokens, heads, dim)
            q_ref, k_ref = q.clone(), k.clone()
            triton_ops.rope_store_kv(q, k, v, caches[0], caches[1], slots, positions, cos, sin)
            reference.rope_store_kv(q_ref, k_ref, v, caches[2], caches[3], slots, positions,
                                    cos, sin)
            for got_t, want_t in ((q, q_ref), (k, k_ref), (caches[0], caches[2]),
                                  (caches[1], caches[3])):
                torch.testing.assert_close(got_t, want_t)

            tables = torch.randperm(8, dtype=torch.int32).view(2, 4).repeat(3, 1)[:tokens]
            seq_lens = torch.tensor([16, 3, 9, 1, 12], dtype=torch.int32)
            want = reference.decode_attention(q, caches[0], caches[1], tables, seq_lens, 0.3)
            for num_splits in (None, 1, 3):
                got = triton_ops.decode_attention(q, caches[0], caches[1], tables, seq_lens,
                                                  0.3, max_seq_len=16, num_splits=num_splits)
                torch.testing.assert_close(got, want)


def test_a_bad_signature_fails_every_call_beside_a_stored_plan(compile_keys):
    """A plan is stored only for a signature whose checks passed: a bad one raises each
    time, and a bad max_seq_len raises on a stored plan too."""
    launch.clear_plans()
    x, weight = torch.randn(4, 16), torch.randn(16)
    triton_ops.rms_norm(x, weight, 1e-6)
    for _ in range(2):
        with pytest.raises(TypeError, match="x must be one of"):
            triton_ops.rms_norm(x.to(torch.int32), weight, 1e-6)
        with pytest.raises(ValueError, match="weight has shape"):
            triton_ops.rms_norm(x, torch.randn(8), 1e-6)
        with pytest.raises(ValueError, match="must be \\[T, 2 \\* intermediate\\]"):
            triton_ops.silu_and_mul(torch.randn(4, 15))
    model = TinyModel()
    tables = torch.zeros(2, 3, dtype=torch.int32)  # 3 pages of 16: 48 tokens
    seq_lens = torch.tensor([40, 7], dtype=torch.int32)
    query = model.randn(2, model.q_heads, model.head_dim)
    args = (query, model.k_cache, model.v_cache, tables, seq_lens, 0.125)
    triton_ops.decode_attention(*args, max_seq_len=40)
    for _ in range(2):
        with pytest.raises(ValueError, match="exceed the block table's capacity"):
            triton_ops.decode_attention(*args, max_seq_len=49)
        with pytest.raises(TypeError, match="seq_lens must be int32 or int64"):
            triton_ops.decode_attention(*args[:4], seq_lens.float(), 0.125, max_seq_len=40)
    assert compile_keys["_decode_split_kernel"].launches == 1


def test_a_repeated_call_launches_what_its_first_call_launched(monkeypatch):
    """The launch a stored plan makes (grid and every argument) is the one a fresh plan
    makes for the same signature, for every op of a decode layer."""
    launched = []

    class Recorder:
        def __getitem__(self, grid):
            def record(*args, **kwargs):
                launched.append((grid, [a.dtype if isinstance(a, torch.Tensor) else a
                                        for a in args], kwargs))  # fresh tensors each step
            return record

    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, Recorder())
    model = TinyModel()
    runs = []
    for clear in (True, False, False):
        if clear:
            launch.clear_plans()
        launched.clear()
        torch.manual_seed(0)
        model.decode_step(6, seq_len=300)
        runs.append(list(launched))
    assert len(runs[0]) >= 6 and runs[0] == runs[1] == runs[2]
