"""Paged KV cache, preallocated once from a budget, and its block allocator.

Layout per layer (see binbaton.kernels.reference): [num_blocks, block_size, Hkv, D].
A sequence owns a list of blocks (its block table); token t lives in slot
``blocks[t // block_size] * block_size + t % block_size``.
"""

from __future__ import annotations

from collections import deque

import torch


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V of one token across all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * itemsize


def blocks_from_budget(
    budget_tokens: int | None, budget_bytes: int | None, block_size: int, token_bytes: int
) -> int:
    tokens = budget_tokens if budget_tokens is not None else (budget_bytes or 0) // token_bytes
    num_blocks = tokens // block_size
    if num_blocks < 1:
        raise ValueError(
            f"KV budget holds {tokens} tokens, less than one block of {block_size}"
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
    """One K and one V tensor per layer, allocated up front."""

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
        self.num_blocks = num_blocks
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
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

    def block_tables(self, tables: list[list[int]], device: torch.device) -> torch.Tensor:
        """[B, max_blocks] int32, rows padded with block 0 (never read past seq_lens)."""
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        return torch.tensor(padded, dtype=torch.int32, device=device)

    def slot_mapping(
        self,
        block_tables: torch.Tensor,  # [B, max_blocks] int32
        seq_index: torch.Tensor,  # [T] int64, which sequence each token belongs to
        positions: torch.Tensor,  # [T] int64
    ) -> torch.Tensor:  # [T] int64
        blocks = block_tables[seq_index, positions // self.block_size].long()
        return blocks * self.block_size + positions % self.block_size
