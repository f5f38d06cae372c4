"""The classifier's decision, without Kafka: validate against the served model, tokenize,
predict the output length, pick the bin. ``binbaton predict`` and the Kafka classifier
both decide through ``decide_guarded``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binbaton.schemas.codec import InvalidMessage
from binbaton.schemas.errors import ErrorCode
from binbaton.schemas.messages import Request
from binbaton.schemas.settings import ConfigError
from binbaton.service.classifier.bins import AdaptiveBinner, BinBoundaries, Binner, FixedBinner
from binbaton.service.classifier.config import AUTO, ClassifierConfig
from binbaton.service.predictor.interface import LengthPredictor, PredictionInput
from binbaton.service.predictor.registry import DEFAULT_ARTIFACT
from binbaton.service.predictor.registry import make_predictor as predictor_registry
from binbaton.service.telemetry.tracing import StageTimer
from binbaton.workers.engine.loader import load_hf_config, load_tokenizer

log = logging.getLogger("binbaton.classifier")


# ---------------------------------------------------------------------------------------
# Predictors by name.


def make_predictor(config: ClassifierConfig, tokenizer: Any = None) -> LengthPredictor:
    """The predictor named by ``config.predictor`` (``auto``: learned when its trained
    model exists)."""
    name = config.predictor
    if name == AUTO:
        name = "learned" if DEFAULT_ARTIFACT.exists() or config.predictor_path else "max_tokens"
    try:
        return predictor_registry(
            name,
            artifact=Path(config.predictor_path) if config.predictor_path else None,
            snapshot_path=Path(config.predictor_snapshot) if config.predictor_snapshot else None,
            learning_rate=config.predictor_learning_rate,
            decode=tokenizer.decode if tokenizer is not None else None,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"predictor {name!r}: {exc}") from exc


def make_binner(config: ClassifierConfig) -> Binner:
    boundaries = BinBoundaries(config.bin_edges)
    if config.binner == "adaptive":  # one of bins.BINNERS
        return AdaptiveBinner(boundaries)
    return FixedBinner(boundaries)


# ---------------------------------------------------------------------------------------
# The decision, without Kafka.


@dataclass(frozen=True)
class Decision:
    """A valid request, tokenized, with its predicted output length and bin."""

    request: Request
    prompt_token_ids: tuple[int, ...]
    predicted_tokens: int
    bin: int
    features: PredictionInput  # what the predictor saw (kept to learn from the result)


@dataclass(frozen=True)
class ModelLimits:
    max_model_len: int  # prompt tokens must be fewer than this
    vocab_size: int  # prompt token ids must be below this


def load_model_limits(model: str, tokenizer: Any, max_model_len: int | None) -> ModelLimits:
    """Context length and vocabulary size from the model's config (no weights loaded)."""
    hf_config = load_hf_config(model)
    text_config = getattr(hf_config, "text_config", None) or hf_config
    context = getattr(text_config, "max_position_embeddings", None)
    if max_model_len is not None:
        context = min(context, max_model_len) if context else max_model_len
    if not context:
        raise ConfigError(f"{model}: config has no max_position_embeddings; give --max-model-len")
    vocab = getattr(text_config, "vocab_size", None) or len(tokenizer)
    return ModelLimits(max_model_len=int(context), vocab_size=int(vocab))


class Router:
    """Validates against the served model, tokenizes, predicts, and picks the bin."""

    def __init__(
        self,
        tokenizer: Any,
        limits: ModelLimits,
        predictor: LengthPredictor,
        binner: Binner,
        max_tokens_limit: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.predictor = predictor
        self.binner = binner
        self.max_tokens_limit = max_tokens_limit

    @classmethod
    def from_config(cls, config: ClassifierConfig) -> Router:
        tokenizer = load_tokenizer(config.model)
        return cls(
            tokenizer=tokenizer,
            limits=load_model_limits(config.model, tokenizer, config.max_model_len),
            predictor=make_predictor(config, tokenizer),
            binner=make_binner(config),
            max_tokens_limit=config.max_tokens_limit,
        )

    @property
    def num_bins(self) -> int:
        return self.binner.num_bins

    def decide(
        self, requests: Sequence[Request], timer: StageTimer | None = None
    ) -> list[Decision | InvalidMessage]:
        """One outcome per request, in order: a Decision, or why it cannot be served.

        ``timer`` records the batch's tokenize/validate/predict/route stages (for tracing)."""
        timer = timer or StageTimer()
        with timer.measure("tokenize"):
            tokenized = self._tokenize(requests)
        outcomes: list[Decision | InvalidMessage | None] = []
        valid: list[int] = []
        token_ids: list[tuple[int, ...]] = []
        with timer.measure("validate"):
            for index, (request, ids) in enumerate(zip(requests, tokenized, strict=True)):
                problem = ids if isinstance(ids, InvalidMessage) else self._check(request, ids)
                outcomes.append(problem)
                token_ids.append(() if isinstance(ids, InvalidMessage) else ids)
                if problem is None:
                    valid.append(index)
        with timer.measure("predict"):
            features = [self._features(requests[i], token_ids[i]) for i in valid]
            predicted = self.predictor.predict(features) if features else []
            predicted = [max(1, min(int(p), requests[i].max_tokens))
                         for i, p in zip(valid, predicted, strict=True)]
        with timer.measure("route"):
            bins = self._assign(predicted)
        for index, item, tokens, bin in zip(valid, features, predicted, bins, strict=True):
            outcomes[index] = Decision(
                request=requests[index],
                prompt_token_ids=token_ids[index],
                predicted_tokens=tokens,
                bin=bin,
                features=item,
            )
        return outcomes  # type: ignore[return-value]  # every None was replaced

    def _assign(self, predicted: list[int]) -> list[int]:
        """Bins of one batch (an adaptive binner moves its edges only between batches)."""
        return self.binner.assign_batch(predicted)

    def _tokenize(self, requests: Sequence[Request]) -> list[tuple[int, ...] | InvalidMessage]:
        """Token ids of each request's prompt (or why its conversation cannot be rendered).

        Texts are tokenized in one call per kind: a ``prompt`` with the tokenizer's special
        tokens, a rendered conversation without them (its template already holds them)."""
        outcomes: list[tuple[int, ...] | InvalidMessage] = []
        prompts: dict[int, str] = {}
        chats: dict[int, str] = {}
        for index, request in enumerate(requests):
            outcomes.append(tuple(request.prompt_token_ids or ()))
            if request.prompt is not None:
                prompts[index] = request.prompt
            elif request.messages is not None:
                rendered = self._render(request)
                if isinstance(rendered, InvalidMessage):
                    outcomes[index] = rendered
                else:
                    chats[index] = rendered
        for texts, special in ((prompts, True), (chats, False)):
            if texts:
                encoded = self.tokenizer(list(texts.values()), add_special_tokens=special)
                for index, ids in zip(texts, encoded["input_ids"], strict=True):
                    outcomes[index] = tuple(ids)
        return outcomes

    def _render(self, request: Request) -> str | InvalidMessage:
        """The conversation as the model's chat template writes it, ready for the answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            return InvalidMessage(ErrorCode.NO_CHAT_TEMPLATE,
                                  "`messages` needs a chat template; the served model's "
                                  "tokenizer has none (send `prompt` instead)", request.id)
        conversation = [{"role": m.role, "content": m.content} for m in request.messages or ()]
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja2 errors, or raise_exception() inside the template
            return InvalidMessage(ErrorCode.CHAT_TEMPLATE_ERROR,
                                  f"the model's chat template refused `messages`: {exc}",
                                  request.id)
        return str(text)

    def _check(self, request: Request, ids: tuple[int, ...]) -> InvalidMessage | None:
        if request.max_tokens > self.max_tokens_limit:
            return InvalidMessage(
                ErrorCode.MAX_TOKENS_TOO_LARGE,
                f"max_tokens {request.max_tokens} exceeds the server limit "
                f"{self.max_tokens_limit}",
                request.id,
            )
        if not ids:
            return InvalidMessage(ErrorCode.EMPTY_PROMPT, "the prompt has no tokens",
                                  request.id)
        if len(ids) >= self.limits.max_model_len:
            return InvalidMessage(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(ids)} tokens; the model's context is "
                f"{self.limits.max_model_len} tokens (at least one must be left to generate)",
                request.id,
            )
        if len(ids) + request.max_tokens > self.limits.max_model_len:
            return InvalidMessage(
                ErrorCode.TOO_LONG,
                f"prompt ({len(ids)}) + max_tokens ({request.max_tokens}) = "
                f"{len(ids) + request.max_tokens} exceeds the model context "
                f"{self.limits.max_model_len}",
                request.id,
            )
        if request.prompt_token_ids is not None:
            bad = [t for t in ids if t >= self.limits.vocab_size]
            if bad:
                return InvalidMessage(
                    ErrorCode.TOKEN_OUT_OF_RANGE,
                    f"prompt_token_ids contains {bad[0]}; the vocabulary has "
                    f"{self.limits.vocab_size} tokens",
                    request.id,
                )
        return None

    @staticmethod
    def _features(request: Request, ids: tuple[int, ...]) -> PredictionInput:
        return PredictionInput(
            prompt=request.prompt if request.messages is None else request.conversation_text(),
            prompt_token_ids=ids,
            max_tokens=request.max_tokens,
            metadata=dict(request.metadata),
        )


def decide_guarded(
    router: Router, requests: Sequence[Request], timer: StageTimer | None = None
) -> list[Decision | InvalidMessage]:
    """``router.decide`` for the whole batch; if that fails (a bug in the tokenizer or the
    predictor, not bad input), one by one, and a request that still fails gets an
    ``internal`` error: one request never stops the others."""
    if not requests:
        return []
    try:
        return router.decide(requests, timer)
    except Exception:
        log.exception("deciding a batch of %d failed; deciding one by one", len(requests))
    outcomes: list[Decision | InvalidMessage] = []
    for request in requests:
        try:
            outcomes += router.decide([request])
        except Exception as exc:
            outcomes.append(InvalidMessage(ErrorCode.INTERNAL, f"the decision failed: {exc!r}",
                                           request.id))
    return outcomes
