"""Engine configuration: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
POLICIES: tuple[str, ...] = ("static", "multibin-static", "insert", "multibin-insert")
KERNEL_BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


@dataclass(frozen=True)
class EngineConfig:
    # a checkpoint directory, a .gguf file (or a directory holding one), a named model
    # (binbaton.workers.engine.loader.NAMED_MODELS) or a hub id
    model: str
    device: str = "cpu"
    dtype: str = "float32"
    policy: str = "multibin-insert"
    max_batch: int = 16  # running sequences at most (all bins together)
    # KV cache budget: give at most one. With neither, the budget is kv_memory_fraction of
    # the memory still free after loading weights (CUDA: device memory; CPU: available RAM),
    # capped at max_batch sequences of max_model_len tokens each.
    kv_budget_tokens: int | None = None
    kv_budget_bytes: int | None = None
    kv_memory_fraction: float | None = None  # None: the device's default (engine/memory.py)
    block_size: int = 16  # tokens per KV cache block
    max_model_len: int | None = None  # cap on the model's context (None: the model's own)
    max_prefill_tokens: int | None = None  # prompt tokens prefilled per step (None: no cap)
    # Multi-bin policies, indexed by bin (a bin past the end uses the last entry):
    # running sequences allowed per bin, and output tokens reserved in the KV cache at
    # admission for a request of that bin (None: reserve from predicted_tokens/max_tokens).
    bin_max_batch: tuple[int, ...] | None = None
    bin_reserved_tokens: tuple[int, ...] | None = None
    kernel_backend: str = "auto"  # passed to binbaton.kernels.ops.select_ops
    # Replay the decode step as CUDA graphs, one per batch-size bucket, captured at startup
    # (CUDA with the Triton kernels only; the CPU runs the same static buffers eagerly).
    # False: eager on CUDA too (debugging, profiling).
    cuda_graphs: bool = True
    seed: int = 0  # generator for sampled requests that carry no seed

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a local directory or a hub id")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported; choose one of {DTYPES}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {POLICIES}")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(
                f"kernel_backend {self.kernel_backend!r} is not one of {KERNEL_BACKENDS}"
            )
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_budget_tokens is not None and self.kv_budget_bytes is not None:
            raise ValueError("give kv_budget_tokens or kv_budget_bytes, not both")
        for name in ("kv_budget_tokens", "kv_budget_bytes", "max_model_len", "max_prefill_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.kv_budget_tokens is not None and self.kv_budget_tokens < self.block_size:
            raise ValueError(f"kv_budget_tokens {self.kv_budget_tokens} holds less than one "
                             f"block: give at least block_size {self.block_size}")
        if self.kv_memory_fraction is not None and not 0 < self.kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction}")
        for name in ("bin_max_batch", "bin_reserved_tokens"):
            values = getattr(self, name)
            if values is None:
                continue
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"{name} must be a non-empty tuple, got {values!r}")
            if any(v < 1 for v in values):
                raise ValueError(f"{name} entries must be >= 1, got {values}")
        if self.bin_max_batch is not None and max(self.bin_max_batch) > self.max_batch:
            raise ValueError(
                f"bin_max_batch {self.bin_max_batch} exceeds max_batch {self.max_batch}"
            )

    @cached_property
    def decode_buckets(self) -> tuple[int, ...]:
        """Decode batch sizes the step is padded to: 1, 2, 4, 8, then every 8, and max_batch."""
        sizes = [b for b in (1, 2, 4, 8) if b < self.max_batch]
        sizes += range(16, self.max_batch, 8)
        return (*sizes, self.max_batch)

    @property
    def multibin(self) -> bool:
        return self.policy.startswith("multibin")

    @property
    def insertion(self) -> bool:
        return self.policy.endswith("insert")
