"""Paged KV cache, preallocated once from a budget, and its block allocator.

Layout per layer (see binbaton.kernels.reference): [num_blocks + 1, block_size, Hkv, D].
A sequence owns a list of blocks (its block table); token t lives in slot
``blocks[t // block_size] * block_size + t % block_size``. The last block is scratch: no
sequence ever owns it, so the padding rows of a decode batch can write and read it.
"""

from __future__ import annotations

from collections import deque

import torch
from binbaton.schemas.settings import ConfigError


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V of one token across all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * itemsize


class KVBudgetError(ConfigError):
    """The KV cache budget is too small to hold one block: a setting the person can fix."""


def blocks_from_budget(
    budget_tokens: int | None, budget_bytes: int | None, block_size: int, token_bytes: int
) -> int:
    tokens = budget_tokens if budget_tokens is not None else (budget_bytes or 0) // token_bytes
    num_blocks = tokens // block_size
    if num_blocks < 1:
        raise KVBudgetError(
            f"the KV cache budget holds {tokens} tokens, less than one block of {block_size}: "
            f"give --kv-budget-tokens of at least {block_size} (or more --kv-budget-bytes, "
            f"--kv-memory-fraction), or a smaller --block-size"
        )
    return num_blocks


class BlockAllocator:
    """Free list of cache blocks."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self.free):
            raise RuntimeError(f"asked for {count} blocks, {len(self.free)} free")
        return [self.free.popleft() for _ in range(count)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


class KVCache:
    """One K and one V tensor per layer, allocated up front, plus the scratch block."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.block_size = block_size
        self.num_blocks = num_blocks  # blocks sequences can own
        self.scratch_block = num_blocks  # never allocated: padding rows write and read it
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.k: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.v: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.allocator = BlockAllocator(num_blocks)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)
