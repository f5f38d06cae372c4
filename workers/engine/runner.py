"""The model runner: the model, the KV cache, the decode batch's persistent buffers, one
step's forward passes and sampling.

Every running sequence owns a row of the decode batch from its prefill until the
scheduler frees it; rows stay packed at the front (a freed row takes the last row's
sequence). Each row's inputs (last token, length, block table, sampling parameters) live
in host buffers that are updated in place when a sequence joins, grows, leaves or takes a
token, and are copied to fixed device buffers once per step (from pinned memory, without
waiting, on CUDA). A decode batch of n rows runs at the smallest bucket >= n; the rows past
n are padding: length 1, block table and cache slot on the scratch block no sequence owns.
The attention op gets the cache's per-sequence capacity as its max length and a split
count fixed per bucket, so nothing about a launch depends on the batch's contents. The
forward's per-layer results go to static buffers too (``CausalLM.decode_outputs``).

On CUDA (Triton kernels) each bucket's decode forward is captured once as a CUDA graph
and replayed; on the CPU the same buffers run eagerly. Either way the step's one host
sync is the transfer of the sampled ids.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from binbaton.kernels.ops import KernelOps, select_ops
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.kv_cache import KVCache, blocks_from_budget, bytes_per_token
from binbaton.workers.engine.loader import DTYPES, load_model
from binbaton.workers.engine.memory import announce_kv_cache, device_kv_budget_tokens
from binbaton.workers.engine.model import ForwardBatch
from binbaton.workers.engine.sampler import Sampler, SamplingRows, row_values
from binbaton.workers.engine.scheduler import ScheduledBatch
from binbaton.workers.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTokens:
    """What one step sampled, on the host."""

    prefill: list[int]  # each newcomer's first token, in ScheduledBatch.prefill order
    decode: list[int]  # each decoded sequence's next token, in ScheduledBatch.decode order
    prefill_s: float
    decode_s: float  # with the rows' bookkeeping and the wait for the transfer
    # Unix times for the requests' timelines, taken on the host: on CUDA, when the work
    # was queued (the device may finish it later; only the transfer waits for it).
    prefill_finished_at: float  # the newcomers' prefill sampled their first tokens
    decode_started_at: float


EMPTY_STEP = StepTokens([], [], 0.0, 0.0, 0.0, 0.0)


class RowBuffer:
    """One per-row input of the decode batch: a host tensor written through a numpy view
    (pinned on CUDA) and the device tensor the forward reads (on the CPU: the same one)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, pad: float,
                 device: torch.device):
        self.pad = pad  # the value of a padding row
        self.host = torch.full(shape, pad, dtype=dtype, pin_memory=device.type == "cuda")
        self.np = self.host.numpy()
        self.device = self.host if device.type == "cpu" else self.host.to(device)

    def upload(self, rows: int) -> None:
        """Copy rows [0, rows) to the device, queued on the current stream."""
        if self.device is not self.host:
            self.device[:rows].copy_(self.host[:rows], non_blocking=True)

    def move(self, src: int, dst: int) -> None:
        """Row ``dst`` takes row ``src``'s values; ``src`` becomes padding."""
        self.np[dst] = self.np[src]
        self.np[src] = self.pad


def accepted(fn: Callable[..., Any], kwargs: dict[str, int]) -> dict[str, int]:
    """The keywords ``fn`` takes (the torch twins take fewer than the Triton ops)."""
    names = _parameter_names(fn)
    return {k: v for k, v in kwargs.items() if k in names}


@functools.cache
def _parameter_names(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


class ModelRunner:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.ops: KernelOps = select_ops(config.kernel_backend, self.device)
        loaded = load_model(config.model, self.device, config.dtype, self.ops,
                            config.max_model_len)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = loaded.eos_token_ids
        self.max_model_len = loaded.max_model_len
        self.cache = self._allocate_cache()
        self.vocab_size = loaded.shape.vocab_size
        self.sampler = Sampler(self.vocab_size, self.device)
        self.buckets = config.decode_buckets
        self.rows: list[Sequence] = []  # row -> its sequence; rows [0, len) are live
        self._num_sampled_rows = 0  # live rows that are not greedy
        self._allocate_rows()
        self._decode_batches = {b: self._decode_batch(b) for b in self.buckets}
        outputs = self.model.decode_outputs(config.max_batch)
        self._decode_outputs = {b: outputs(b) for b in self.buckets}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if self._use_cuda_graphs():
            with self._on_device():
                self._capture_graphs()

    # ---- setup ------------------------------------------------------------------------

    def _budget_tokens(self, token_bytes: int) -> int | None:
        """The configured token budget, or the default when no budget is configured."""
        config = self.config
        if config.kv_budget_tokens is not None or config.kv_budget_bytes is not None:
            return config.kv_budget_tokens
        return device_kv_budget_tokens(self.device, token_bytes, config.max_batch,
                                       self.max_model_len, config.kv_memory_fraction)

    def _allocate_cache(self) -> KVCache:
        shape, config = self.model.shape, self.config
        dtype = DTYPES[config.dtype]
        token_bytes = bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim, dtype)
        num_blocks = blocks_from_budget(
            self._budget_tokens(token_bytes), config.kv_budget_bytes, config.block_size,
            token_bytes,
        )
        cache = KVCache(shape.num_layers, num_blocks, config.block_size, shape.num_kv_heads,
                        shape.head_dim, dtype, self.device)
        announce_kv_cache(cache.capacity_tokens, token_bytes)
        return cache

    def _allocate_rows(self) -> None:
        rows, device, cache = self.config.max_batch, self.device, self.cache
        self.max_blocks_per_seq = cache.blocks_for(self.max_model_len)
        scratch_slot = cache.scratch_block * cache.block_size
        self.token_ids = RowBuffer((rows,), torch.int64, 0, device)  # the token fed next
        self.seq_lens = RowBuffer((rows,), torch.int32, 1, device)  # cached tokens incl. it
        self.positions = RowBuffer((rows,), torch.int64, 0, device)  # seq_len - 1
        self.slot_mapping = RowBuffer((rows,), torch.int64, scratch_slot, device)
        self.block_tables = RowBuffer((rows, self.max_blocks_per_seq), torch.int32,
                                      cache.scratch_block, device)
        self.temperature = RowBuffer((rows,), torch.float32, 1.0, device)
        self.top_k = RowBuffer((rows,), torch.int64, self.vocab_size, device)
        self.top_p = RowBuffer((rows,), torch.float32, 1.0, device)
        self.sampling_keys = RowBuffer((rows,), torch.int64, 0, device)
        self.greedy = RowBuffer((rows,), torch.bool, True, device)
        self._inputs = (self.token_ids, self.seq_lens, self.positions, self.slot_mapping,
                        self.block_tables)
        self._sampling = (self.temperature, self.top_k, self.top_p, self.sampling_keys,
                          self.greedy)
        self._row_index = np.arange(rows)
        self.logits = torch.zeros(rows, self.vocab_size, device=device)  # [max_batch, V]

    def _decode_batch(self, bucket: int) -> ForwardBatch:
        """The decode forward's inputs at ``bucket`` rows: views of the static buffers."""
        hints = {"max_seq_len": self.max_blocks_per_seq * self.cache.block_size}
        if self.ops.name == "triton":
            from binbaton.kernels.decode_attention import pick_num_splits
            from binbaton.kernels.launch import sm_count

            hints["num_splits"] = pick_num_splits(
                bucket, self.model.shape.num_kv_heads, hints["max_seq_len"],
                sm_count(self.device),
            )
        return ForwardBatch(
            positions=self.positions.device[:bucket],
            slot_mapping=self.slot_mapping.device[:bucket],
            is_prefill=False,
            block_tables=self.block_tables.device[:bucket],
            seq_lens=self.seq_lens.device[:bucket],
            attention_kwargs=accepted(self.ops.decode_attention, hints),
        )

    def _use_cuda_graphs(self) -> bool:
        if self.device.type != "cuda" or not self.config.cuda_graphs:
            return False
        if self.ops.name != "triton":  # the torch twins read lengths back: not capturable
            log.warning("CUDA graphs need the triton kernel backend; decoding eagerly")
            return False
        return True

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """On CUDA, the runner's device is the current one (streams and graph replays
        follow the current device, and the engine may step in a thread of its own)."""
        if self.device.type == "cuda":
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        """One CUDA graph per bucket, largest first, sharing one memory pool.

        Every row is padding here: the warm-up and the captures write only the scratch
        block. The warm-up (on a side stream, as capture requires) compiles the kernels.
        """
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for bucket in self.buckets:
                self._decode_forward(bucket)
        current.wait_stream(side)
        torch.cuda.synchronize(self.device)
        pool = torch.cuda.graph_pool_handle()  # the smaller graphs reuse the largest's memory
        for bucket in reversed(self.buckets):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._decode_forward(bucket)
            self.graphs[bucket] = graph
        torch.cuda.synchronize(self.device)

    # ---- one step ---------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepTokens:
        """Prefill the newcomers, then decode every running sequence (newcomers fed their
        first token on the device); one transfer brings both steps' tokens to the host."""
        with self._on_device():
            return self._run(batch)

    def _run(self, batch: ScheduledBatch) -> StepTokens:
        start = time.perf_counter()
        new_rows = self._update_rows(batch)
        n = len(self.rows)
        if n == 0:
            return EMPTY_STEP
        bucket = self.buckets[bisect.bisect_left(self.buckets, n)]
        sampling = self._num_sampled_rows > 0  # decided on the host, no mask read back
        self._prepare_decode(n)
        self._upload(n, bucket, sampling)
        prefill_start = time.perf_counter()
        prefill = self._prefill(batch.prefill, new_rows, sampling)
        prefill_s, now = time.perf_counter() - prefill_start, time.time()
        decoded = self._decode(n, bucket, sampling)
        tokens = (decoded if prefill is None else torch.cat([prefill, decoded])).tolist()
        by_row = tokens[len(batch.prefill) :]  # [n]
        self.token_ids.np[:n] = by_row  # each row feeds its new token next step
        self.seq_lens.np[:n] += 1
        return StepTokens(
            prefill=tokens[: len(batch.prefill)],
            decode=[by_row[seq.row] for seq in batch.decode],  # type: ignore[index]
            prefill_s=prefill_s,
            decode_s=time.perf_counter() - start - prefill_s,
            prefill_finished_at=now,
            decode_started_at=now,
        )

    def _prefill(
        self, seqs: list[Sequence], new_rows: slice, sampling: bool
    ) -> torch.Tensor | None:
        """Run the newcomers' tokens packed, store their K/V, sample each one's first token
        and feed it to its decode row. Returns the tokens [k] on the device."""
        if not seqs:
            return None
        lengths = np.fromiter((len(s.token_ids) for s in seqs), np.int64, len(seqs))  # [k]
        cu_seqlens = np.zeros(len(seqs) + 1, np.int32)
        np.cumsum(lengths, out=cu_seqlens[1:])  # [k + 1]
        num_tokens = int(cu_seqlens[-1])
        token_ids = np.fromiter(chain.from_iterable(s.token_ids for s in seqs), np.int64,
                                num_tokens)  # [T]
        positions = np.arange(num_tokens) - np.repeat(cu_seqlens[:-1], lengths)  # [T]
        rows = np.repeat(self._row_index[new_rows], lengths)  # [T]
        blocks = self.block_tables.np[rows, positions // self.cache.block_size]  # [T]
        slots = blocks * self.cache.block_size + positions % self.cache.block_size  # [T]
        batch = ForwardBatch(
            positions=self._to_device(positions),
            slot_mapping=self._to_device(slots),
            is_prefill=True,
            cu_seqlens=self._to_device(cu_seqlens),
            attention_kwargs=accepted(self.ops.prefill_attention,
                                      {"max_seqlen": int(lengths.max())}),
        )
        logits_index = self._to_device(cu_seqlens[1:].astype(np.int64) - 1)  # [k]
        logits = self.model(self._to_device(token_ids), batch, self.cache.k, self.cache.v,
                            logits_index)  # [k, V]
        counters = self.seq_lens.device[new_rows] - 1  # first token's index: prompt length
        params = self._sampling_rows(new_rows) if sampling else None
        tokens = self.sampler(logits, params, counters)  # [k]
        self.token_ids.device[new_rows] = tokens
        return tokens

    def _decode(self, n: int, bucket: int, sampling: bool) -> torch.Tensor:
        """One token for rows [0, n), running ``bucket`` rows. Returns [n] on the device."""
        graph = self.graphs.get(bucket)
        if graph is not None:
            graph.replay()
        else:
            self._decode_forward(bucket)
        rows = slice(0, n)
        return self.sampler(self.logits[rows], self._sampling_rows(rows) if sampling else None,
                            self.seq_lens.device[rows])

    def _decode_forward(self, bucket: int) -> None:
        """The decode forward over the static buffers into ``self.logits`` (what a CUDA
        graph captures: no allocation outside its pool, no host sync)."""
        logits = self.model(self.token_ids.device[:bucket], self._decode_batches[bucket],
                            self.cache.k, self.cache.v,
                            outputs=self._decode_outputs[bucket])  # [bucket, V]
        self.logits[:bucket].copy_(logits)

    # ---- the rows ---------------------------------------------------------------------

    def _update_rows(self, batch: ScheduledBatch) -> slice:
        """Rows follow the scheduler: freed ones go, grown ones get their new blocks,
        newcomers take rows at the end. Returns the newcomers' rows."""
        for seq in batch.freed:
            self._release(seq)
        for seq in batch.grown:
            self._write_block_table(seq)
        first = len(self.rows)
        for seq in batch.prefill:
            self._assign_row(seq)
        assert len(self.rows) == len(batch.decode), "every running sequence holds a row"
        return slice(first, len(self.rows))

    def _upload(self, n: int, bucket: int, sampling: bool) -> None:
        """Copy the rows the step reads to the device (nothing to copy on the CPU)."""
        for buf in self._inputs:
            buf.upload(bucket)
        if sampling:
            for buf in self._sampling:
                buf.upload(n)

    def _assign_row(self, seq: Sequence) -> None:
        """A newcomer takes the next row; its decode this step feeds its first token."""
        assert seq.row is None, "a sequence holds one row at most"
        seq.row = len(self.rows)
        self.rows.append(seq)
        self._write_block_table(seq)
        self.seq_lens.np[seq.row] = len(seq.token_ids) + 1
        temperature, top_k, top_p, greedy = row_values(seq.request.sampling, self.vocab_size)
        self.temperature.np[seq.row] = temperature
        self.top_k.np[seq.row] = top_k
        self.top_p.np[seq.row] = top_p
        self.sampling_keys.np[seq.row] = seq.sampling_key
        self.greedy.np[seq.row] = greedy
        self._num_sampled_rows += not greedy

    def _release(self, seq: Sequence) -> None:
        """``seq`` leaves the batch: the last row moves into its row."""
        row = seq.row
        if row is None:
            return
        self._num_sampled_rows -= not self.greedy.np[row]
        last = len(self.rows) - 1
        for buf in (*self._inputs, *self._sampling):
            buf.move(last, row)
        moved = self.rows.pop()
        if moved is not seq:
            self.rows[row] = moved
            moved.row = row
        seq.row = None

    def reset_rows(self) -> None:
        """Every row goes (after a failed step: the engine recomputes its sequences)."""
        for seq in self.rows:
            seq.row = None
        self.rows = []
        for buf in (*self._inputs, *self._sampling):
            buf.np[...] = buf.pad
        self._num_sampled_rows = 0

    def _write_block_table(self, seq: Sequence) -> None:
        assert seq.row is not None
        self.block_tables.np[seq.row, : len(seq.blocks)] = seq.blocks

    def _prepare_decode(self, n: int) -> None:
        """Positions and cache slots of rows [0, n) from their lengths and block tables."""
        positions = self.positions.np[:n]
        np.subtract(self.seq_lens.np[:n], 1, out=positions)
        block_size = self.cache.block_size
        blocks = self.block_tables.np[self._row_index[:n], positions // block_size]  # [n]
        self.slot_mapping.np[:n] = blocks * block_size + positions % block_size

    def _sampling_rows(self, rows: slice) -> SamplingRows:
        return SamplingRows(
            temperature=self.temperature.device[rows],
            top_k=self.top_k.device[rows],
            top_p=self.top_p.device[rows],
            key=self.sampling_keys.device[rows],
            greedy=self.greedy.device[rows],
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)
