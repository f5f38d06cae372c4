"""The default KV cache size: a fraction of the memory the worker can still use.

Read once, after the weights are loaded: free device memory on CUDA, available RAM on the
CPU (``MemAvailable``, lowered by a cgroup limit when the worker runs in a container).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# CUDA: the worker owns the device, so most of what the weights left is cache.
CUDA_KV_MEMORY_FRACTION = 0.9
# CPU: the worker shares RAM with the classifier, the broker and the other workers
# (`binbaton up --workers N` starts N, each taking this share), and CPU decoding is
# compute-bound well before a batch needs thousands of cached tokens per sequence.
# See "Sizing memory" in README.md for the measured figure.
CPU_KV_MEMORY_FRACTION = 0.025

# (limit, usage) files of cgroup v2, then v1.
CGROUP_MEMORY_FILES: tuple[tuple[str, str], ...] = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
NO_CGROUP_LIMIT = 1 << 60  # cgroup v1 reports "unlimited" as a huge page-aligned number


def default_kv_budget_tokens(
    bytes_per_token: int, max_batch: int, max_model_len: int, available_bytes: int,
    fraction: float,
) -> int:
    """Tokens that ``fraction`` of ``available_bytes`` holds, at most max_batch full contexts."""
    affordable = int(available_bytes * fraction) // bytes_per_token
    return min(max_batch * max_model_len, affordable)


def kv_memory_fraction(configured: float | None, device_type: str) -> float:
    if configured is not None:
        return configured
    return CUDA_KV_MEMORY_FRACTION if device_type == "cuda" else CPU_KV_MEMORY_FRACTION


def meminfo_available_bytes(meminfo: str) -> int:
    """``MemAvailable`` of a /proc/meminfo text, in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise ValueError("no MemAvailable line in /proc/meminfo")


def cgroup_bytes_left(limit: str, usage: str) -> int | None:
    """Bytes a cgroup may still allocate; None when it has no limit."""
    limit = limit.strip()
    if limit == "max" or int(limit) >= NO_CGROUP_LIMIT:
        return None
    return max(0, int(limit) - int(usage))


def available_ram_bytes() -> int:
    try:
        available = meminfo_available_bytes(Path("/proc/meminfo").read_text())
    except OSError:  # not Linux
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in CGROUP_MEMORY_FILES:
        try:
            left = cgroup_bytes_left(Path(limit_file).read_text(), Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if left is not None:
            available = min(available, left)
        break
    return available


def available_bytes(device: torch.device) -> int:
    """Memory the KV cache may come from: free on the CUDA device, else available RAM."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return free_bytes
    return available_ram_bytes()


def device_kv_budget_tokens(
    device: torch.device, bytes_per_token: int, max_batch: int, max_model_len: int,
    fraction: float | None,
) -> int:
    """The default budget on ``device``, with its default fraction unless one is given."""
    return default_kv_budget_tokens(
        bytes_per_token, max_batch, max_model_len, available_bytes(device),
        kv_memory_fraction(fraction, device.type),
    )


def kv_cache_line(tokens: int, bytes_per_token: int) -> str:
    return f"kv cache: {tokens} tokens, {tokens * bytes_per_token / 2**20:.0f} MiB"


def announce_kv_cache(tokens: int, bytes_per_token: int) -> None:
    """Logged at INFO, and on stderr, where an operator sees it at the default log level."""
    line = kv_cache_line(tokens, bytes_per_token)
    log.info(line)
    print(line, file=sys.stderr, flush=True)
