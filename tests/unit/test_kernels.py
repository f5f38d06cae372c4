"""The Triton kernels against their torch twins and float64, on every available device.

``cpu``: the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 where no CUDA is present, before anything imports triton). ``cuda``:
compiled kernels, plus sizes the interpreter cannot afford. The @triton.jit decorator
(triton's own library functions included) decides interpreted vs compiled when it is
imported, so one process runs one of the two and the other is skipped with its reason.
The checks live in tests/kernel_checks.py.
"""

import os
import subprocess
import sys

import kernel_checks as kc
import pytest
import torch
from binbaton.kernels import ops
from kernel_checks import ActivationCase, DecodeCase, NormCase, PrefillCase, StoreCase

pytest.importorskip("triton")
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DEVICES = ("cpu", "cuda")


def interpreted() -> bool:
    from binbaton.kernels import decode_attention, launch

    return launch.is_interpreted(decode_attention._decode_split_kernel)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The device a test runs on; skipped where this process cannot run kernels there."""
    name = getattr(request, "param", "cpu")
    if name == "cpu" and not interpreted():
        pytest.skip("this process compiles the kernels (CUDA is present): the CPU needs "
                    "TRITON_INTERPRET=1 set before triton is imported")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if name == "cuda" and interpreted():
        pytest.skip("the kernels are interpreted in this process (TRITON_INTERPRET=1)")
    return name


def on_devices(common: list, cuda_only: list = ()) -> list:
    """(case, device) params: the common cases on every device, the large ones on CUDA."""
    pairs = [(case, d) for d in DEVICES for case in common]
    pairs += [(case, "cuda") for case in cuda_only]
    return [pytest.param(case, d, id=f"{d}-{_name(case)}") for case, d in pairs]


def _name(case) -> str:
    return "-".join(map(str, case)) if isinstance(case, tuple) else str(case)


def per_device(test):
    return pytest.mark.parametrize("device", DEVICES, indirect=True)(test)


# batch 1/3/17, lengths 1/7/129/1000, GQA 1/2/7, head sizes 64/128 and 80/96, each dtype;
# long contexts only with small batch x heads (the interpreter runs every program in Python).
DECODE_CASES = [
    DecodeCase(1, 2, 1, 64, 1, 16, F32),
    DecodeCase(3, 7, 1, 80, 7, 8, F32),
    DecodeCase(17, 4, 4, 128, 129, 16, F32),
    DecodeCase(1, 14, 2, 96, 1000, 32, F32),  # heuristic picks 4 splits
    DecodeCase(3, 2, 2, 64, 129, 1, F32, num_splits=5),  # page size 1, split 5 > needed
    DecodeCase(3, 4, 2, 64, 1000, 16, F16, num_splits=3),
    DecodeCase(17, 2, 1, 64, 129, 16, F16, num_splits=1),
    DecodeCase(3, 4, 2, 128, 129, 16, BF16, num_splits=2),
    DecodeCase(1, 7, 1, 80, 1000, 16, BF16),
]
DECODE_CUDA_CASES = [
    *(DecodeCase(b, hq, hkv, d, ln, 16, dt)
      for dt in (F16, BF16)
      for b, hq, hkv, d, ln in [(1, 32, 8, 128, 8192), (3, 14, 2, 64, 1000),
                                (17, 7, 1, 80, 129), (64, 32, 8, 128, 2048),
                                (256, 32, 8, 128, 1024), (5, 28, 4, 128, 4097)]),
    DecodeCase(2, 8, 1, 256, 300, 16, BF16, num_splits=2),
]

PREFILL_CASES = [
    PrefillCase((1,), 2, 1, 64, F32),
    PrefillCase((7, 1, 129), 7, 1, 80, F32),
    PrefillCase((5, 1, 9, 2, 13, 1, 7, 3, 11, 1, 4, 6, 1, 8, 2, 10, 3), 4, 4, 64, F32),
    PrefillCase((1000,), 2, 1, 64, F32),
    PrefillCase((7, 129, 33), 4, 2, 128, F16),
    PrefillCase((129, 1, 7), 7, 1, 96, BF16),
]
PREFILL_CUDA_CASES = [
    PrefillCase((129, 1, 7), 7, 1, 96, F16),
    PrefillCase((7, 129, 33), 4, 2, 128, BF16),
    *(PrefillCase(lens, hq, hkv, d, dt)
      for dt in (F16, BF16)
      for lens, hq, hkv, d in [((2048, 1, 500, 63), 32, 8, 128), ((4096,), 14, 2, 64)]),
]

STORE_CASES = [
    StoreCase(1, 1, 64, 16, F32, F32),
    StoreCase(17, 2, 80, 16, F32, F32, padding=True),  # decode append, padding slots
    StoreCase(129, 4, 128, 16, F16, F16, strided=True),  # prefill from a fused qkv view
    StoreCase(7, 7, 96, 1, BF16, BF16, padding=True, strided=True),
    StoreCase(33, 2, 64, 8, F32, F16),  # cast into a half-precision cache
    StoreCase(9, 2, 64, 8, F32, BF16),
    StoreCase(5, 40, 64, 16, F16, F16),  # more heads than one block of heads
]
STORE_CUDA_CASES = [StoreCase(4096, 8, 128, 16, BF16, BF16)]

ROPE_CASES = [  # (case, query heads)
    (StoreCase(1, 1, 64, 16, F32, F32), 2),
    (StoreCase(17, 1, 128, 16, F32, F32, padding=True, strided=True), 7),
    (StoreCase(129, 2, 96, 16, F16, F16), 4),
    (StoreCase(7, 2, 80, 8, BF16, BF16, strided=True), 14),
    (StoreCase(3, 40, 64, 16, F32, F32, padding=True), 80),  # several blocks of heads
]
ROPE_CUDA_CASES = [(StoreCase(2048, 8, 128, 16, BF16, BF16, strided=True), 32)]

NORM_CASES = [
    NormCase((1, 64), F32, F32, residual=False),
    NormCase((3, 7, 80), F32, F32, residual=True),
    NormCase((17, 1000), F16, F16, residual=True),
    NormCase((3, 96), BF16, BF16, residual=True),
    NormCase((7, 128), BF16, F32, residual=False),  # fp32 weight: output promotes
    NormCase((5, 4096), F16, F16, residual=False),
]
NORM_CUDA_CASES = [
    NormCase((513, 8192), BF16, BF16, residual=True),
    NormCase((4096, 32, 128), BF16, BF16, residual=False),  # q/k norm shape
]

ACTIVATION_CASES = [
    ActivationCase(1, 64, F32),
    ActivationCase(3, 1000, F32, strided=True),  # I not a multiple of the block
    ActivationCase(17, 2500, F32),  # three column blocks
    ActivationCase(5, 96, F32, spread=40.0),  # exp overflows for large negative gates
    ActivationCase(7, 1100, F16, strided=True),
    ActivationCase(2, 80, F16, spread=8.0),
    ActivationCase(9, 1030, BF16),
    ActivationCase(4, 48, BF16, strided=True, spread=40.0),
]
ACTIVATION_CUDA_CASES = [
    *(ActivationCase(t, i, dt) for dt in (F16, BF16, F32)
      for t, i in [(1, 14336), (256, 11008), (4096, 4864)]),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kernels_are_interpreted_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the kernels compile")
    assert interpreted(), (
        "binbaton.kernels.triton_ops was imported before TRITON_INTERPRET=1 was set"
    )


@pytest.mark.parametrize(("case", "device"), on_devices(DECODE_CASES, DECODE_CUDA_CASES),
                         indirect=["device"])
def test_decode_attention(case, device):
    kc.check_decode(case, device)


@pytest.mark.parametrize(("case", "device"), on_devices(PREFILL_CASES, PREFILL_CUDA_CASES),
                         indirect=["device"])
def test_prefill_attention(case, device):
    kc.check_prefill(case, device)


@pytest.mark.parametrize(("case", "device"), on_devices(STORE_CASES, STORE_CUDA_CASES),
                         indirect=["device"])
def test_store_kv(case, device):
    kc.check_store(case, device)


@pytest.mark.parametrize(("case", "device"), on_devices(ROPE_CASES, ROPE_CUDA_CASES),
                         indirect=["device"])
def test_rope_store_kv(case, device):
    store_case, q_heads = case
    kc.check_rope_store(store_case, q_heads, device)


@pytest.mark.parametrize(("case", "device"), on_devices(NORM_CASES, NORM_CUDA_CASES),
                         indirect=["device"])
def test_rms_norm(case, device):
    kc.check_rms_norm(case, device)


@pytest.mark.parametrize(("case", "device"),
                         on_devices(ACTIVATION_CASES, ACTIVATION_CUDA_CASES),
                         indirect=["device"])
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # on purpose
def test_silu_and_mul(case, device):
    kc.check_silu_and_mul(case, device)


def test_rope_store_kv_matches_hf_rotary_exactly():
    """Float32 under the interpreter: with the engine's cos/sin table the fused kernel
    rotates bit for bit like Hugging Face's apply_rotary_pos_emb (on CUDA, FMA contraction
    may change the last bit)."""
    if not interpreted():
        pytest.skip("exactness is an interpreter (CPU) property")
    from binbaton.kernels import triton_ops
    from binbaton.workers.engine.model import Rotary
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, max_len = 64, 300
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    rotary = Rotary(inv_freq, attention_scaling=1.0, max_len=max_len)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(19, 8, head_dim, generator=gen)
    k = torch.randn(19, 2, head_dim, generator=gen)
    v = torch.randn(19, 2, head_dim, generator=gen)
    positions = torch.randint(0, max_len, (19,), generator=gen)
    q_engine, k_engine = apply_rotary_pos_emb(q, k, rotary.cos[positions], rotary.sin[positions])
    k_cache = torch.full((4, 8, 2, head_dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(32, generator=gen)[:19]
    triton_ops.rope_store_kv(q, k, v, k_cache, v_cache, slots, positions, rotary.cos,
                             rotary.sin)
    assert torch.equal(q, q_engine) and torch.equal(k, k_engine)
    assert torch.equal(k_cache.view(-1, 2, head_dim)[slots], k_engine)
    assert torch.equal(v_cache.view(-1, 2, head_dim)[slots], v)


def test_silu_and_mul_twin_matches_hf_mlp_exactly():
    """Float32: the twin is bit for bit the Llama MLP's act_fn(gate) * up."""
    gen = torch.Generator().manual_seed(5)
    gate, up = torch.randn(13, 300, generator=gen), torch.randn(13, 300, generator=gen)
    expected = torch.nn.functional.silu(gate) * up
    assert torch.equal(ops.TORCH_OPS.silu_and_mul(torch.cat((gate, up), dim=-1)), expected)


def test_decode_split_heuristic():
    from binbaton.kernels.decode_attention import pick_num_splits

    assert pick_num_splits(256, 8, 8192, sm_count=132) == 1  # batch fills the GPU
    assert pick_num_splits(1, 8, 100, sm_count=132) == 1  # too short to split
    assert pick_num_splits(1, 8, 8192, sm_count=132) == 32  # ~2 waves, 256 tokens each
    assert pick_num_splits(1, 1, 1 << 20, sm_count=132) == 64  # capped
    assert pick_num_splits(4, 2, 1000, sm_count=132) == 4  # >= 256 tokens per split


@per_device
def test_launchers_reject_bad_input(device):
    from binbaton.kernels import triton_ops

    def randn(*shape):
        return torch.randn(*shape, device=device)

    q = randn(2, 4, 64)
    cache = randn(4, 16, 2, 64)
    tables = torch.zeros(2, 4, dtype=torch.int32, device=device)
    lens = torch.ones(2, dtype=torch.int32, device=device)
    long = torch.zeros(2, dtype=torch.long, device=device)
    for _ in range(2):  # a signature that failed its checks fails again
        with pytest.raises(ValueError, match="does not fit"):
            triton_ops.decode_attention(randn(2, 3, 64), cache, cache, tables, lens, 0.1)
    with pytest.raises(TypeError, match="seq_lens"):
        triton_ops.decode_attention(q, cache, cache, tables, lens.float(), 0.1)
    triton_ops.decode_attention(q, cache, cache, tables, lens, 0.1)  # a valid signature
    with pytest.raises(ValueError, match="capacity"):  # its values are checked every call
        triton_ops.decode_attention(q, cache, cache, tables, lens * 65, 0.1)
    with pytest.raises(ValueError, match="out"):
        triton_ops.decode_attention(q, cache, cache, tables, lens, 0.1,
                                    out=torch.empty(2, 4, device=device))
    with pytest.raises(ValueError, match="slot_mapping"):
        triton_ops.store_kv(q[:, :2], q[:, :2], cache, cache,
                            torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="even head size"):
        odd = randn(2, 2, 5)
        triton_ops.rope_store_kv(odd, odd, odd, randn(1, 4, 2, 5), randn(1, 4, 2, 5),
                                 long, long, torch.ones(8, 5, device=device),
                                 torch.ones(8, 5, device=device))
    with pytest.raises(ValueError, match="multiple"):
        triton_ops.prefill_attention(randn(3, 3, 64), randn(3, 2, 64), randn(3, 2, 64),
                                     torch.tensor([0, 3], device=device), 0.1)
    with pytest.raises(ValueError, match="weight"):
        triton_ops.rms_norm(randn(2, 8), randn(7), 1e-6)
    with pytest.raises(ValueError, match="2 \\* intermediate"):
        triton_ops.silu_and_mul(randn(2, 7))
    with pytest.raises(ValueError, match="2 \\* intermediate"):
        triton_ops.silu_and_mul(randn(2, 3, 8))
    with pytest.raises(TypeError, match="x must be"):
        triton_ops.silu_and_mul(torch.ones(2, 8, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="out"):
        triton_ops.silu_and_mul(randn(2, 8), out=randn(2, 8))
    with pytest.raises(ValueError, match="contiguous"):
        triton_ops.silu_and_mul(randn(8, 2).t())


def test_cpu_tensors_are_refused_when_compiled():
    if interpreted():
        pytest.skip("the kernels are interpreted in this process: CPU tensors are fine")
    from binbaton.kernels import triton_ops

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_ops.rms_norm(torch.randn(2, 8), torch.randn(8), 1e-6)


def test_select_ops():
    cpu = torch.device("cpu")
    assert ops.select_ops("auto", cpu).name == "torch"
    assert ops.select_ops("torch", cpu) is ops.TORCH_OPS
    assert ops.TORCH_OPS.silu_and_mul is not None
    with pytest.raises(ValueError, match="not one of"):
        ops.select_ops("cuda", cpu)
    if not interpreted():
        return
    triton_ops = ops.select_ops("triton", cpu)  # the interpreter is on in this process
    from binbaton.kernels import triton_ops as t

    assert triton_ops.name == "triton" and triton_ops.decode_attention is t.decode_attention
    assert triton_ops.rope_store_kv is t.rope_store_kv
    assert triton_ops.silu_and_mul is t.silu_and_mul


def test_ops_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any `import triton` now fails
        "import torch\n"
        "from binbaton.kernels import ops\n"
        "cpu = torch.device('cpu')\n"
        "assert ops.select_ops('auto', cpu).name == 'torch'\n"
        "assert not ops.triton_available(cpu)\n"
        "try:\n"
        "    ops.select_ops('triton', cpu)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: kernel backend 'triton' needs triton" in done.stdout


def test_bench_quick_on_cuda(tmp_path):
    if not torch.cuda.is_available() or interpreted():
        pytest.skip("needs CUDA with compiled kernels")
    import json

    from binbaton.bench import kernels as bench

    args = bench.build_parser().parse_args(["--device", "cuda", "--quick", "--out",
                                            str(tmp_path)])
    assert bench.main(args) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["system"] for r in result["rows"]} == set(bench.SYSTEMS)
    assert all(r["achieved_gb_per_s"] > 0 and r["max_abs_diff_vs_twin"] < 3e-2
               for r in result["rows"])
