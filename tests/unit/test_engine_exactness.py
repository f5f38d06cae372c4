"""Every request's tokens equal Hugging Face generate on that request alone, for all four
tiny architectures and all four policies, with staggered arrivals (insertion mid-decode)."""

from __future__ import annotations

import pytest

POLICIES = ("static", "multibin-static", "insert", "multibin-insert")

ARCH_FIXTURES = ("tiny_llama_dir", "tiny_mistral_dir", "tiny_qwen2_dir", "tiny_qwen3_dir")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("checkpoint", ARCH_FIXTURES)
def test_engine_matches_hf_generate(checkpoint, policy, request, run_exactness):
    run = run_exactness(request.getfixturevalue(checkpoint), policy)
    if policy.endswith("insert"):
        assert run.mid_decode_admissions > 0  # newcomers joined a batch mid-decode
    else:
        assert run.mid_decode_admissions == 0  # static batches run to completion


def test_multibin_under_prediction_preempts_and_stays_exact(tiny_llama_dir, run_exactness):
    """Reservations from too-small predictions force growth; preempted sequences are
    recomputed and still match HF token for token."""
    run = run_exactness(
        tiny_llama_dir, "multibin-insert", kv_budget_tokens=640, bin_reserved_tokens=(4,)
    )
    assert run.preempted > 0
