"""One module per ``binbaton`` command; each has ``main(argv) -> exit code``.

The dispatcher (``binbaton.service.app.cli``) imports a command's module only when that
command runs, so ``binbaton results`` never loads torch.
"""

SUMMARIES = {
    "up": "the whole service: broker, topics, classifier, workers",
    "broker": "the embedded Kafka-protocol broker alone",
    "topics": "create the topics (idempotent)",
    "classifier": "the classifier service alone",
    "worker": "one worker for the given bins",
    "produce": "send requests: a prompt, a JSONL file or a trace",
    "results": "follow the results topic (de-duplicated by id)",
    "predict": "Request JSON lines on stdin -> {id, predicted_tokens, bin} lines (no Kafka)",
    "demo": "up + a replayed workload + a summary table",
    "schema": "print the JSON Schema of Request and Result",
    "bench": "side-by-side benchmarks (binbaton bench --help)",
    "train-predictor": "train the length predictor (binbaton train-predictor --help)",
}


def module_of(command: str) -> str:
    """The module whose ``main(argv)`` runs ``command``."""
    if command == "bench":
        return "binbaton.bench.cli"
    return f"{__name__}.{command.replace('-', '_')}"
