"""binbaton: LLM inference fed by Kafka (Multi-Bin Batching + BATON mid-flight KV insertion)."""

__version__ = "0.1.0"
