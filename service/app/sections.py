"""Which config each group of flags belongs to, and the groups the commands share.

Every flag is declared on a config field (see ``flags``), except the engine's: EngineConfig
belongs to the engine (``workers/engine/config.py``) and declares no flag metadata, so its
help texts are ``ENGINE_SETTINGS`` below. Every EngineConfig field is a flag; a field the
engine adds becomes one with a generic help text until it gets a line here (a bool field:
``--x/--no-x``).
"""

from __future__ import annotations

from binbaton.schemas.settings import Setting, int_list, non_empty, positive_int
from binbaton.service.app.flags import Section
from binbaton.service.app.logs import LogConfig
from binbaton.service.app.signals import WatchdogConfig
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.kafka.broker import BrokerConfig
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig
from binbaton.service.telemetry.metrics import MetricsConfig
from binbaton.service.telemetry.tracing import TracingConfig
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.config import DTYPES, KERNEL_BACKENDS, POLICIES, EngineConfig

AUTO = "auto"  # device: cuda when one is visible, else cpu; dtype: float32 on cpu, else bfloat16


def device_name(text: str) -> str:
    if text not in (AUTO, "cpu", "cuda") and not text.startswith("cuda:"):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


ENGINE_SETTINGS = {
    "model": Setting("a checkpoint directory, a .gguf file (or a directory holding one), a "
                     "named model (smollm2-135m-instruct) or a Hugging Face hub id",
                     parse=non_empty),
    "device": Setting("auto, cpu, cuda or cuda:N (auto: cuda when one is visible)",
                      parse=device_name),
    "dtype": Setting("model dtype (auto: float32 on CPU, bfloat16 on CUDA)",
                     choices=(AUTO, *DTYPES)),
    "policy": Setting("engine batching policy", choices=POLICIES),
    "max_batch": Setting("engine: most sequences decoded together", parse=positive_int),
    "kv_budget_tokens": Setting("engine: KV cache size in tokens", parse=positive_int),
    "kv_budget_bytes": Setting("engine: KV cache size in bytes (instead of tokens)",
                               parse=positive_int),
    "kv_memory_fraction": Setting("engine: without a budget, the share of free memory the KV "
                                  "cache may take (default: 0.9 of free GPU memory, 0.025 of "
                                  "available RAM)"),
    "cuda_graphs": Setting("engine: capture the decode forward as CUDA graphs, one per batch "
                           "bucket, and replay them (CUDA with triton kernels only; "
                           "--no-cuda-graphs decodes eagerly)"),
    "block_size": Setting("engine: tokens per KV cache block", parse=positive_int),
    "max_model_len": Setting("context length the service accepts (default: the model's)",
                             parse=positive_int),
    "max_prefill_tokens": Setting("engine: prompt tokens prefilled per step, at most",
                                  parse=positive_int),
    "bin_max_batch": Setting("engine: running sequences allowed per bin, e.g. 32,16,8",
                             parse=int_list),
    "bin_reserved_tokens": Setting("engine: output tokens reserved per sequence of each bin",
                                   parse=int_list),
    "kernel_backend": Setting("engine kernels (auto: triton on CUDA)", choices=KERNEL_BACKENDS),
    "seed": Setting("engine: seed of sampled requests that carry none"),
}

KAFKA = Section(KafkaConfig)
BOOTSTRAP = KAFKA.part("bootstrap_servers")
BROKER = Section(BrokerConfig)
TOPICS = Section(TopicsConfig)
CLASSIFIER = Section(ClassifierConfig)
ENGINE = Section(EngineConfig, described=ENGINE_SETTINGS, defaults={"device": AUTO, "dtype": AUTO})
WORKER = Section(WorkerConfig)
TRACING = Section(TracingConfig)
METRICS = Section(MetricsConfig)
LOG = Section(LogConfig)
WATCHDOG = Section(WatchdogConfig)

WORKER_PROCESS = (KAFKA, BROKER, TOPICS.part("prefix", "partitions"), ENGINE, WORKER, TRACING,
                  METRICS, LOG, WATCHDOG)  # `binbaton worker`
SERVICE = (KAFKA, BROKER, TOPICS, CLASSIFIER, ENGINE,
           WORKER.part("worker_id", "max_in_flight", "drain_timeout_s", "commit_interval_s",
                       "state_dir", "max_attempts"),
           TRACING, METRICS, LOG)  # `binbaton up` and `binbaton demo`, with the supervisor's
CLIENT = (BOOTSTRAP, BROKER, TOPICS.part("prefix"), TRACING, LOG)  # produce, results
