"""Fault injection for tests, in no shipped code: a Python process that has this folder on
its PYTHONPATH imports this module at start-up. With ``TEST_FAULT_EXIT_ON_ID=<text>`` set,
a worker process dies at once (``os._exit(3)``, as a native crash would: no drain, no
commit) when it submits to its engine a request whose id contains ``<text>``."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

TARGET = "binbaton.workers.worker"
MARKER = os.environ.get("TEST_FAULT_EXIT_ON_ID")


def _patch(module: ModuleType) -> None:
    submit = module.Worker._submit

    def _submit(self: Any, request: Any) -> Any:
        if MARKER and MARKER in request.id:
            os._exit(3)
        return submit(self, request)

    module.Worker._submit = _submit


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


if MARKER:
    sys.meta_path.insert(0, _PatchOnImport())
