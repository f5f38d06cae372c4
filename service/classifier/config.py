"""ClassifierConfig: how the classifier validates, predicts and routes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from binbaton.schemas.settings import (
    ConfigError,
    int_list,
    non_empty,
    positive_float,
    positive_int,
    setting,
)
from binbaton.service.classifier.bins import BINNERS
from binbaton.service.kafka.attempts import max_attempts_field, state_dir_field
from binbaton.service.predictor.learned import DEFAULT_LEARNING_RATE
from binbaton.service.predictor.registry import PREDICTOR_NAMES

AUTO = "auto"  # the learned predictor when its trained model exists, else max_tokens
PREDICTORS = (AUTO, *PREDICTOR_NAMES)


@dataclass(frozen=True)
class ClassifierConfig:
    model: str = field(metadata=setting(
        "Hugging Face model id or local checkpoint directory", parse=non_empty))
    bin_edges: tuple[int, ...] = field(metadata=setting(
        "k-1 increasing upper edges of the bins in predicted tokens, e.g. 64,256 "
        "(default: equal-mass quantiles of the Azure trace's output lengths)", parse=int_list))
    predictor: str = field(default=AUTO, metadata=setting(
        "length predictor (auto: learned when its trained artifact exists, else max_tokens)",
        choices=PREDICTORS))
    predictor_path: str | None = field(default=None, metadata=setting(
        "trained model of the learned predictor (default: service/artifacts/)", parse=non_empty))
    predictor_snapshot: str | None = field(default=None, metadata=setting(
        "file where the learned predictor keeps what it learned online (restarts resume)",
        parse=non_empty))
    predictor_learning_rate: float = field(default=DEFAULT_LEARNING_RATE, metadata=setting(
        "online step size of the learned predictor (normalised LMS: 1 fits each new example "
        "exactly; small values keep a trained model steady)", parse=positive_float))
    binner: str = field(default=BINNERS[0], metadata=setting(
        "fixed bin edges, or adaptive equal-mass edges over recent predictions",
        choices=BINNERS))
    max_tokens_limit: int = field(default=4096, metadata=setting(
        "server limit on a request's max_tokens", parse=positive_int))
    max_model_len: int | None = field(default=None, metadata=setting(
        "context length the service accepts (default: the model's)", parse=positive_int))
    batch_size: int = field(default=64, metadata=setting(
        "classifier: requests read and routed per batch", parse=positive_int))
    poll_timeout_ms: int = 200
    max_request_bytes: int = field(default=1 << 20, metadata=setting(
        "largest request message accepted (bytes); larger ones are dead-lettered",
        parse=positive_int))
    observe_cache: int = field(default=100_000, metadata=setting(
        "classifier: requests remembered for learning from their results (LRU)",
        parse=positive_int))
    learn_from_results: bool = True
    state_dir: str | None = state_dir_field()
    max_attempts: int = max_attempts_field()

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("the classifier needs --model (its tokenizer decides prompt lengths)")
        edges = self.bin_edges
        if any(e < 1 for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
            shown = ",".join(map(str, edges))
            raise ConfigError(f"--bin-edges must be increasing positive integers (upper edges "
                              f"in predicted tokens, e.g. 64,256), got {shown}")
        for name in ("max_tokens_limit", "batch_size", "poll_timeout_ms", "max_request_bytes",
                     "observe_cache", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.predictor not in PREDICTORS:
            raise ConfigError(f"unknown predictor {self.predictor!r}; choose one of "
                              f"{', '.join(PREDICTORS)}")
        if not 0 < self.predictor_learning_rate <= 1:
            raise ConfigError("predictor_learning_rate must be in (0, 1], got "
                              f"{self.predictor_learning_rate}")
        if self.binner not in BINNERS:
            raise ConfigError(f"binner must be one of {', '.join(BINNERS)}, got {self.binner!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")

    @property
    def num_bins(self) -> int:
        return len(self.bin_edges) + 1
