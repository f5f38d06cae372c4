"""The Triton kernel ops, with the signatures of ``reference`` (imports triton).

Compiled for CUDA tensors; on the CPU they run only under the Triton interpreter, which
must be switched on (``TRITON_INTERPRET=1``) before this module is first imported.
"""

from __future__ import annotations

from binbaton.kernels.decode_attention import decode_attention
from binbaton.kernels.kv_store import rope_store_kv, store_kv
from binbaton.kernels.prefill_attention import prefill_attention
from binbaton.kernels.rms_norm import rms_norm
from binbaton.kernels.silu_and_mul import silu_and_mul

__all__ = ["decode_attention", "prefill_attention", "rms_norm", "rope_store_kv",
           "silu_and_mul", "store_kv"]
