"""The engine: continuous batching with mid-flight KV insertion over a paged cache.

One ``step()``: admit waiting requests into free capacity (the policy decides) → prefill
the newcomers together, packed without padding, writing their K/V into the cache → one
decode step for every running sequence → sample → retire finished sequences and hand
their outputs out at once. Freed blocks are reused by the next step's admissions.
Cache blocks are released in exactly one place: ``_free``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from binbaton.kernels.ops import select_ops
from binbaton.schemas.errors import ErrorCode
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.kv_cache import KVCache, blocks_from_budget, bytes_per_token
from binbaton.workers.engine.loader import DTYPES, load_model
from binbaton.workers.engine.model import ForwardBatch
from binbaton.workers.engine.policy import AdmissionBudget, make_policy
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest
from binbaton.workers.engine.sampler import Sampler, make_generator
from binbaton.workers.engine.sequence import Sequence, error_output
from binbaton.workers.engine.stats import EngineStats, StepStats


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.ops = select_ops(config.kernel_backend, self.device)
        loaded = load_model(config.model, self.device, config.dtype, self.ops,
                            config.max_model_len)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = loaded.eos_token_ids
        self.max_model_len = loaded.max_model_len
        shape = loaded.shape
        dtype = DTYPES[config.dtype]
        token_bytes = bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim, dtype)
        num_blocks = blocks_from_budget(
            self._budget_tokens(token_bytes), config.kv_budget_bytes, config.block_size,
            token_bytes,
        )
        self.cache = KVCache(shape.num_layers, num_blocks, config.block_size,
                             shape.num_kv_heads, shape.head_dim, dtype, self.device)
        self.policy = make_policy(config)
        self.sampler = Sampler(config.seed, self.device)
        self.waiting: list[Sequence] = []  # FIFO; preempted sequences go back to the front
        self.running: list[Sequence] = []  # admission order (youngest last)
        self._rejected: list[GenerationOutput] = []
        self._preempted = 0  # this step
        self._decode_started_at = 0.0  # unix time of this step's decode forward
        self.stats = EngineStats()
        self.last_step = StepStats()

    # ---- public API -------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; an unservable one comes out of the next step() as an error."""
        problem = self._check(request)
        if problem is not None:
            self._rejected.append(error_output(request, *problem))
            return
        seq = Sequence(
            request=request,
            token_ids=list(request.prompt_token_ids),
            generator=make_generator(request.sampling.seed, self.device),
        )
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._rejected)

    def step(self) -> list[GenerationOutput]:
        outputs, self._rejected = self._rejected, []
        self._preempted = 0
        newcomers = self._admit()
        prefill_s, prefill_tokens = self._timed(self._prefill, newcomers)
        outputs += self._retire()  # newcomers done on their first token
        decode_s, decoded = self._timed(self._decode, list(self.running))
        if newcomers and decoded and self.config.insertion:
            self._mark_inserted(newcomers)
        outputs += self._retire()
        self._record(outputs, newcomers, prefill_tokens, decoded, prefill_s, decode_s)
        return outputs

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationOutput]:
        """Run ``requests`` to completion; outputs in the order of ``requests``."""
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("generate() needs distinct request ids")
        for request in requests:
            self.add(request)
        done: dict[str, GenerationOutput] = {}
        while self.has_work():
            done.update((out.id, out) for out in self.step())
        return [done[i] for i in ids]

    # ---- admission and checks ---------------------------------------------------------

    def _budget_tokens(self, token_bytes: int) -> int | None:
        """The configured token budget, or the default when no budget is configured."""
        config = self.config
        if config.kv_budget_tokens is not None or config.kv_budget_bytes is not None:
            return config.kv_budget_tokens
        tokens = config.max_batch * self.max_model_len
        if self.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            tokens = min(tokens, int(free_bytes * config.kv_memory_fraction) // token_bytes)
        return tokens

    def _check(self, request: GenerationRequest) -> tuple[str, str] | None:
        prompt_len = len(request.prompt_token_ids)
        total = prompt_len + request.sampling.max_tokens
        vocab = self.model.shape.vocab_size
        if prompt_len == 0:
            return "empty_prompt", "the prompt has no tokens"
        if any(not 0 <= t < vocab for t in request.prompt_token_ids):
            return ErrorCode.TOKEN_OUT_OF_RANGE, f"prompt token ids must lie in [0, {vocab})"
        if total > self.max_model_len:
            return "too_long", (
                f"prompt ({prompt_len}) + max_tokens ({request.sampling.max_tokens}) = {total} "
                f"exceeds the model context {self.max_model_len}"
            )
        if total > self.cache.capacity_tokens:
            return "kv_budget", (
                f"prompt + max_tokens = {total} tokens exceeds the KV cache "
                f"({self.cache.capacity_tokens} tokens)"
            )
        return None

    def _admit(self) -> list[Sequence]:
        budget = AdmissionBudget(
            # Blocks the running sequences take at this step's decode are not for newcomers.
            free_blocks=self.cache.allocator.num_free - self._blocks_needed_to_decode(),
            block_size=self.cache.block_size,
            prefill_tokens=self.config.max_prefill_tokens,
        )
        newcomers = self.policy.admit(self.waiting, self.running, budget)
        admitted = set(map(id, newcomers))
        self.waiting = [s for s in self.waiting if id(s) not in admitted]
        now = time.time()
        for seq in newcomers:
            seq.blocks = self.cache.allocator.allocate(self.cache.blocks_for(seq.reserved_len))
            if seq.admitted_at is None:
                seq.admitted_at = now
        return newcomers

    # ---- forward passes ---------------------------------------------------------------

    def _prefill(self, seqs: list[Sequence]) -> int:
        """Prefill ``seqs`` packed together, store their K/V, sample their next token."""
        if not seqs:
            return 0
        lengths = torch.tensor([len(s.token_ids) for s in seqs], device=self.device)  # [B]
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))  # [B + 1]
        seq_index = torch.repeat_interleave(torch.arange(len(seqs), device=self.device), lengths)
        positions = torch.arange(int(cu_seqlens[-1]), device=self.device)  # [T]
        positions -= cu_seqlens[:-1].repeat_interleave(lengths)  # restart at 0 per sequence
        tables = self.cache.block_tables([s.blocks for s in seqs], self.device)  # [B, W]
        batch = ForwardBatch(
            positions=positions,
            slot_mapping=self.cache.slot_mapping(tables, seq_index, positions),
            is_prefill=True,
            cu_seqlens=cu_seqlens.to(torch.int32),
        )
        input_ids = self._tensor([t for s in seqs for t in s.token_ids])  # [T]
        logits = self.model(input_ids, batch, self.cache.k, self.cache.v,
                            logits_index=cu_seqlens[1:] - 1)  # [B, V]
        now = time.time()  # timeline for tracing: once per step, never per token
        for seq in seqs:
            seq.num_cached = len(seq.token_ids)
            if seq.prefill_finished_at is None:
                seq.prefill_finished_at = now
        self.running.extend(seqs)
        self._sample(seqs, logits)
        return len(input_ids)

    def _decode(self, seqs: list[Sequence]) -> int:
        """One token for every running sequence: feed its last token, sample the next."""
        if not seqs:
            return 0
        self._grow(seqs)
        seqs = list(self.running)  # growing may have preempted some
        positions = self._tensor([len(s.token_ids) - 1 for s in seqs])  # [B]
        tables = self.cache.block_tables([s.blocks for s in seqs], self.device)  # [B, W]
        rows = torch.arange(len(seqs), device=self.device)  # [B]
        batch = ForwardBatch(
            positions=positions,
            slot_mapping=self.cache.slot_mapping(tables, rows, positions),
            is_prefill=False,
            block_tables=tables,
            seq_lens=(positions + 1).to(torch.int32),
        )
        input_ids = self._tensor([s.token_ids[-1] for s in seqs])  # [B]
        self._decode_started_at = time.time()
        logits = self.model(input_ids, batch, self.cache.k, self.cache.v, logits_index=rows)
        for seq in seqs:
            seq.num_cached = len(seq.token_ids)
        self._sample(seqs, logits)
        return len(seqs)

    def _mark_inserted(self, newcomers: list[Sequence]) -> None:
        """Newcomers in this step's decode joined the running batch when it started."""
        decoded = set(map(id, self.running))  # retirement comes later: all decoded are here
        for seq in newcomers:
            if seq.inserted_at is None and id(seq) in decoded:
                seq.inserted_at = self._decode_started_at

    def _grow(self, seqs: list[Sequence]) -> None:
        """Give each sequence a block for its next token, preempting the youngest if full."""
        for seq in seqs:  # oldest first
            if seq not in self.running:
                continue  # preempted for an older one
            missing = self.cache.blocks_for(len(seq.token_ids)) - len(seq.blocks)
            while missing > 0 and self.cache.allocator.num_free < missing:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if missing > 0 and seq in self.running:
                seq.blocks += self.cache.allocator.allocate(missing)

    def _blocks_needed_to_decode(self) -> int:
        return sum(
            max(0, self.cache.blocks_for(len(s.token_ids)) - len(s.blocks)) for s in self.running
        )

    def _preempt(self, seq: Sequence) -> None:
        """Drop ``seq``'s cache; it waits at the front and is recomputed on re-admission."""
        self.running.remove(seq)
        self._free(seq)
        self.waiting.insert(0, seq)
        self._preempted += 1

    # ---- sampling and retirement ------------------------------------------------------

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        params = [s.request.sampling for s in seqs]
        tokens = self.sampler(logits, params, [s.generator for s in seqs])
        for seq, token in zip(seqs, tokens, strict=True):
            seq.append(token)
            self._check_finished(seq, token)

    def _check_finished(self, seq: Sequence, token: int) -> None:
        sampling = seq.request.sampling
        eos = not sampling.ignore_eos and token in self.eos_token_ids
        if eos or (sampling.stop and self._cut_at_stop(seq)):
            seq.finish_reason = "stop"
        elif seq.num_generated >= sampling.max_tokens:
            seq.finish_reason = "length"

    def _cut_at_stop(self, seq: Sequence) -> bool:
        text = self._decode_text(seq.generated)
        hits = [i for i in (text.find(s) for s in seq.request.sampling.stop) if i >= 0]
        if not hits:
            return False
        seq.text = text[: min(hits)]  # the stop string is not part of the output
        return True

    def _retire(self) -> list[GenerationOutput]:
        finished = [s for s in self.running if s.finished]
        if not finished:
            return []
        self.running = [s for s in self.running if not s.finished]
        outputs = []
        for seq in finished:
            self._free(seq)
            text = seq.text if seq.text is not None else self._decode_text(seq.generated)
            outputs.append(seq.output(text))
        return outputs

    def _free(self, seq: Sequence) -> None:
        """The one place cache blocks go back to the pool."""
        self.cache.allocator.release(seq.blocks)
        seq.blocks = []
        seq.num_cached = 0

    # ---- helpers ----------------------------------------------------------------------

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _timed(
        self, fn: Callable[[list[Sequence]], int], seqs: list[Sequence]
    ) -> tuple[float, int]:
        start = time.perf_counter()
        tokens = fn(seqs)
        return time.perf_counter() - start, tokens

    def _record(
        self,
        outputs: list[GenerationOutput],
        newcomers: list[Sequence],
        prefill_tokens: int,
        decoded: int,
        prefill_s: float,
        decode_s: float,
    ) -> None:
        errors = sum(1 for o in outputs if not o.ok)
        step = StepStats(
            running=len(self.running),
            waiting=len(self.waiting),
            admitted=len(newcomers),
            retired=len(outputs) - errors,
            errors=errors,
            preempted=self._preempted,
            prefill_tokens=prefill_tokens,
            decode_tokens=decoded,
            generated_tokens=len(newcomers) + decoded,
            prefill_s=prefill_s,
            decode_s=decode_s,
            kv_blocks_used=self.cache.num_blocks - self.cache.allocator.num_free,
        )
        self.stats.add(step)
        self.last_step = step
