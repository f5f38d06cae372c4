"""Error codes: the machine-readable ``error.code`` of an error Result and of a DeadLetter.

One enumeration for every stage that can refuse a request: the classifier, the worker and
the engine. README's "Messages" section lists them. Plain Python (no msgspec): the engine
imports it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"  # not JSON (or not UTF-8)
    INVALID_REQUEST = "invalid_request"  # JSON, but not a valid Request (or BinnedRequest)
    MESSAGE_TOO_LARGE = "message_too_large"  # over the classifier's --max-request-bytes
    MAX_TOKENS_TOO_LARGE = "max_tokens_too_large"  # over the server's --max-tokens-limit
    EMPTY_PROMPT = "empty_prompt"  # the prompt tokenizes to nothing
    PROMPT_TOO_LONG = "prompt_too_long"  # the prompt alone fills the model's context
    TOO_LONG = "too_long"  # prompt + max_tokens exceed the model's context
    TOKEN_OUT_OF_RANGE = "token_out_of_range"  # a prompt token id outside the vocabulary
    KV_BUDGET = "kv_budget"  # prompt + max_tokens exceed the worker's whole KV cache
    INTERNAL = "internal"  # a bug: the request is answered instead of stalling the rest
    UNSUPPORTED_N = "unsupported_n"  # OpenAI `n` other than 1 (one completion per request)
    UNSUPPORTED_STREAM = "unsupported_stream"  # OpenAI `stream: true` (results are whole)
    NO_CHAT_TEMPLATE = "no_chat_template"  # `messages` for a model without a chat template
    CHAT_TEMPLATE_ERROR = "chat_template_error"  # the model's chat template refused `messages`
    TOO_DEEP = "too_deep"  # JSON nested deeper than the codec's MAX_DEPTH
    OUT_OF_RANGE = "out_of_range"  # an integer the engine's types cannot hold (seed, top_k, …)
    FIELD_TOO_LARGE = "field_too_large"  # prompt, stop list or metadata over its size limit
    KEY_MISMATCH = "key_mismatch"  # the message key is not the request's id
    DUPLICATE_ID = "duplicate_id"  # an id in flight, reused by a different request
    POISON = "poison"  # a worker died serving this message --max-attempts times: not retried
