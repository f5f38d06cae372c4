"""Fault injection for tests, in no shipped code: a Python process that has this folder on
its PYTHONPATH imports this module at start-up. With ``TEST_FAULT_EXIT_ON_ID=<text>`` set,
a worker process dies at once (``os._exit(3)``, as a native crash would: no drain, no
commit) when it submits to its engine a request whose id contains ``<text>``, and a
classifier process when it routes a message whose bytes contain ``<text>``."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

MARKER = os.environ.get("TEST_FAULT_EXIT_ON_ID", "")


def _patch_worker(module: ModuleType) -> None:
    submit = module.Worker._submit

    def _submit(self: Any, request: Any) -> Any:
        if MARKER in request.id:
            os._exit(3)
        return submit(self, request)

    module.Worker._submit = _submit


def _patch_classifier(module: ModuleType) -> None:
    route = module.Classifier.route

    async def _route(self: Any, records: Any) -> Any:
        if any(MARKER.encode() in (record.value or b"") for record in records):
            os._exit(3)
        return await route(self, records)

    module.Classifier.route = _route


PATCHES = {"binbaton.workers.worker": _patch_worker,
           "binbaton.service.classifier.service": _patch_classifier}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = PATCHES.get(name)
        if patch is None:
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
            patch(module)

        loader.exec_module = exec_and_patch
        return spec


if MARKER:
    sys.meta_path.insert(0, _PatchOnImport())
