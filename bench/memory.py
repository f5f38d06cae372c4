"""Peak memory of one benchmark row.

CUDA: ``torch.cuda.max_memory_allocated`` (reset before the row).
CPU: the process resident-set high-water mark (VmHWM in /proc/self/status), reset before
the row by writing 5 to /proc/self/clear_refs (Linux), so each row reports its own peak
of the whole process (model weights, KV cache, activations, Python). Where the reset is
not possible the value is the process-lifetime peak, and ``kind`` says so.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class PeakMemory:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.resettable = self.cuda or self._can_reset_rss()

    @property
    def kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated"
        if self.resettable:
            return "process RSS high-water mark (VmHWM), reset per row"
        return "process RSS high-water mark since start (ru_maxrss)"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            CLEAR_REFS.write_text("5")

    def peak_mb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if self.resettable:
            return _vm_hwm_kb() / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            CLEAR_REFS.write_text("5")
            return _vm_hwm_kb() > 0
        except OSError:
            return False


def _vm_hwm_kb() -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
