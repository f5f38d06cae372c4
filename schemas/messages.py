"""Every payload on every topic (the wire contract in README's "Messages"), as msgspec structs.

Decode at the Kafka boundary with the decoders in ``binbaton.schemas.codec``; the rest
of the code sees these typed objects only.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

RequestId = Annotated[str, Meta(min_length=1, max_length=128)]
TokenId = Annotated[int, Meta(ge=0)]
Role = Literal["system", "user", "assistant"]


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One turn of a conversation (OpenAI chat-completions ``messages`` item)."""

    role: Role
    content: str


class Request(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A generation request on ``binbaton.requests`` (OpenAI completions field names).

    The prompt is exactly one of ``prompt`` (text), ``prompt_token_ids`` or ``messages``
    (a conversation, rendered with the served model's chat template). OpenAI clients'
    ``model`` and ``user`` are kept in ``metadata``; ``n`` and ``stream`` are accepted only
    at 1 and false (``binbaton.schemas.codec.decode_request`` rejects other values).
    """

    id: RequestId
    prompt: str | None = None
    prompt_token_ids: list[TokenId] | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] = 256
    temperature: Annotated[float, Meta(ge=0.0)] = 0.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    seed: int | None = None
    # A string or a list; always a list once built (``__post_init__`` wraps a string).
    stop: str | list[str] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    model: str | None = None  # OpenAI: copied into metadata["model"]
    user: str | None = None  # OpenAI: copied into metadata["user"]
    n: int = 1  # OpenAI: only 1
    stream: bool = False  # OpenAI: only false

    def __post_init__(self) -> None:
        given = [self.prompt, self.prompt_token_ids, self.messages]
        if sum(x is not None for x in given) != 1:
            raise ValueError(
                "exactly one of `prompt`, `prompt_token_ids` and `messages` is required")
        if self.prompt_token_ids is not None and not self.prompt_token_ids:
            raise ValueError("`prompt_token_ids` must not be empty")
        if self.prompt is not None and not self.prompt:
            raise ValueError("`prompt` must not be empty")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise ValueError("`stop` strings must not be empty")
        openai = {name: value for name, value in (("model", self.model), ("user", self.user))
                  if value is not None}
        if openai.keys() - self.metadata.keys():
            self.metadata = openai | self.metadata  # a key given in metadata wins

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def conversation_text(self) -> str | None:
        """What the length predictor reads of a ``messages`` request: the turns' text."""
        if self.messages is None:
            return None
        return "\n".join(m.content for m in self.messages)


class BinnedRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A validated, tokenized request routed to ``binbaton.bin.<bin>``."""

    request: Request
    prompt_token_ids: list[TokenId]
    predicted_tokens: int
    bin: int
    received: int  # unix ms the classifier read it
    classified: int  # unix ms the classifier routed it


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(msgspec.Struct):
    """Unix milliseconds of each stage; None where a stage never happened."""

    received: int | None = None
    classified: int | None = None
    admitted: int | None = None
    first_token: int | None = None
    finished: int | None = None


class ErrorInfo(msgspec.Struct):
    code: str
    message: str


class Result(msgspec.Struct):
    """The outcome of one request on ``binbaton.results`` (ok or error)."""

    id: str
    status: Literal["ok", "error"]
    text: str = ""
    token_ids: list[int] = msgspec.field(default_factory=list)
    finish_reason: Literal["stop", "length", "error"] = "error"
    usage: Usage = msgspec.field(default_factory=Usage)
    bin: int | None = None
    predicted_tokens: int | None = None
    worker: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None


class DeadLetter(msgspec.Struct):
    """A message that could not be served, with where it came from."""

    raw: str  # the original value, base64
    error: ErrorInfo
    topic: str
    partition: int
    offset: int
    key: str | None = None  # the request id when it could be recovered
    stage: str = ""  # which process gave up: "classifier", "worker"
    time: int = 0  # unix ms
