"""The engine: continuous batching with mid-flight KV insertion over a paged cache.

One ``step()`` is schedule → run → postprocess:
- the scheduler gives each running sequence a block for its next token (preempting the
  youngest when the cache is full) and admits waiting requests (the policy decides);
- the model runner prefills the newcomers together, packed without padding, writing
  their K/V into the cache, then runs one decode step for every running sequence,
  newcomers included, and brings the sampled tokens to the host in one transfer;
- postprocessing appends the tokens, checks EOS, stop strings and lengths, retires
  finished sequences and hands their outputs out at once.
Cache blocks are released in exactly one place, the scheduler's ``_free``.
"""

from __future__ import annotations

import logging
import random

from binbaton.kernels.ops import KernelOps
from binbaton.schemas.errors import ErrorCode
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.kv_cache import KVCache
from binbaton.workers.engine.model import CausalLM
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest
from binbaton.workers.engine.runner import EMPTY_STEP, ModelRunner, StepTokens
from binbaton.workers.engine.sampler import seed_key
from binbaton.workers.engine.scheduler import ScheduledBatch, Scheduler
from binbaton.workers.engine.sequence import Sequence, error_output
from binbaton.workers.engine.stats import EngineStats, StepStats

log = logging.getLogger(__name__)

STOP_WINDOW_SLACK = 4  # tokens decoded beyond a stop string's length in UTF-8 bytes


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.runner = ModelRunner(config)
        self.tokenizer = self.runner.tokenizer
        self.eos_token_ids = self.runner.eos_token_ids
        self.max_model_len = self.runner.max_model_len
        self.scheduler = Scheduler(config, self.runner.cache)
        self._rejected: list[GenerationOutput] = []
        self._seeds = random.Random(config.seed)  # for sampled requests that carry no seed
        self.stats = EngineStats()
        self.last_step = StepStats()

    @property
    def model(self) -> CausalLM:
        return self.runner.model

    @property
    def cache(self) -> KVCache:
        return self.runner.cache

    @property
    def ops(self) -> KernelOps:
        return self.runner.ops

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

    @property
    def waiting(self) -> list[Sequence]:
        return self.scheduler.waiting

    # ---- public API -------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; an unservable one comes out of the next step() as an error."""
        try:
            problem = self._check(request)
            if problem is None:
                seed = request.sampling.seed
                sequence = Sequence(
                    request=request,
                    token_ids=list(request.prompt_token_ids),
                    sampling_key=seed_key(self._seeds.getrandbits(64) if seed is None else seed),
                )
        except Exception as exc:  # a value nothing above foresaw: this request's error only
            problem = ErrorCode.INTERNAL, f"the engine cannot take this request: {exc!r}"
        if problem is not None:
            self._rejected.append(error_output(request, *problem))
            return
        self.scheduler.add(sequence)

    def abort(self, request_id: str) -> bool:
        """Drop a queued or running request: it yields no output, not even an error
        (a pending error output of that id is dropped too).

        Its cache blocks go back to the pool at once (through the scheduler's ``_free``),
        its decode row at the next step. Every request under that id goes. False when no
        request of that id is queued, running or pending.
        """
        rejected = [o for o in self._rejected if o.id == request_id]
        if rejected:
            self._rejected = [o for o in self._rejected if o.id != request_id]
        return self.scheduler.abort(request_id) or bool(rejected)

    def has_work(self) -> bool:
        return bool(self.scheduler.has_work() or self._rejected)

    def step(self) -> list[GenerationOutput]:
        """schedule → run → postprocess; returns the requests finished by this step."""
        outputs, self._rejected = self._rejected, []
        batch = self.scheduler.schedule()
        try:
            tokens = self.runner.run(batch)
        except Exception as exc:  # one request's fault must not fail the others
            outputs += self._isolate(batch, exc)
            self._record(outputs, batch, EMPTY_STEP, 0)
            return outputs
        finished, decoded = self._postprocess(batch, tokens)
        if batch.probe:
            self.scheduler.clear(batch)
        outputs += finished
        self._record(outputs, batch, tokens, decoded)
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

    def _isolate(self, batch: ScheduledBatch, exc: Exception) -> list[GenerationOutput]:
        """The forward or sampling raised. Alone, the sequence fails (``internal``);
        with others, all become suspects and run alone one by one (the scheduler), so
        only the culprit fails and the rest are recomputed, token for token the same."""
        involved = batch.decode  # every running sequence, newcomers included
        if not involved:
            raise exc
        self.runner.reset_rows()
        if len(involved) > 1:
            log.warning("a step of %d sequences raised %r: running each alone",
                        len(involved), exc)
            self.scheduler.suspect(involved)
            return []
        seq = involved[0]
        log.error("request %s fails: the engine raised %r on it alone", seq.id, exc)
        self.scheduler.drop(seq)
        return [error_output(seq.request, ErrorCode.INTERNAL,
                             f"the engine failed on this request: {exc!r}")]

    # ---- checks -----------------------------------------------------------------------

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

    # ---- postprocessing ---------------------------------------------------------------

    def _postprocess(
        self, batch: ScheduledBatch, tokens: StepTokens
    ) -> tuple[list[GenerationOutput], int]:
        """Append each sequence's tokens (a newcomer's decode token only if its first one
        did not finish it), retire the finished ones. Returns their outputs and the count
        of decode tokens kept."""
        for seq, token in zip(batch.prefill, tokens.prefill, strict=True):
            if seq.prefill_finished_at is None:  # its prefill sampled its first token
                seq.prefill_finished_at = seq.first_token_at = tokens.prefill_finished_at
            self._append(seq, token)
            if self.config.insertion and not seq.finished and seq.inserted_at is None:
                seq.inserted_at = tokens.decode_started_at  # it joined the running batch
        decoded = 0
        for seq, token in zip(batch.decode, tokens.decode, strict=True):
            if seq.finish_reason is None:  # else a newcomer done on its first token
                self._append(seq, token)
                decoded += 1
        finished = [seq for seq in batch.decode if seq.finish_reason is not None]
        self.scheduler.retire(finished)
        return [seq.output(self._final_text(seq)) for seq in finished], decoded

    def _append(self, seq: Sequence, token: int) -> None:
        seq.token_ids.append(token)
        sampling = seq.request.sampling
        eos = token in self.eos_token_ids and not sampling.ignore_eos
        if eos or (sampling.stop and self._cut_at_stop(seq)):
            seq.finish_reason = "stop"
        elif len(seq.token_ids) >= seq.max_len:
            seq.finish_reason = "length"

    def _cut_at_stop(self, seq: Sequence) -> bool:
        """Did the newest token complete a stop string? Then the text ends before it.

        Only a tail of the generated tokens is decoded: a stop string of b UTF-8 bytes
        spans at most b tokens, plus slack for special tokens and split characters.
        """
        stops = seq.request.sampling.stop
        window = max(len(s.encode()) for s in stops) + STOP_WINDOW_SLACK
        tail = self._decode_text(seq.token_ids[max(seq.prompt_len, len(seq.token_ids) - window):])
        if not any(s in tail for s in stops):
            return False
        text = self._decode_text(seq.generated)
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if not hits:
            return False
        seq.text = text[: min(hits)]  # the stop string is not part of the output
        return True

    def _final_text(self, seq: Sequence) -> str:
        return seq.text if seq.text is not None else self._decode_text(seq.generated)

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _record(
        self, outputs: list[GenerationOutput], batch: ScheduledBatch, tokens: StepTokens,
        decoded: int,
    ) -> None:
        errors = sum(1 for o in outputs if not o.ok)
        step = StepStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            admitted=len(batch.prefill),
            retired=len(outputs) - errors,
            errors=errors,
            preempted=batch.preempted,
            prefill_tokens=batch.prefill_tokens,
            decode_tokens=decoded,
            generated_tokens=len(batch.prefill) + decoded,
            prefill_s=tokens.prefill_s,
            decode_s=tokens.decode_s,
            kv_blocks_used=self.cache.num_blocks - self.cache.allocator.num_free,
        )
        self.stats.add(step)
        self.last_step = step
