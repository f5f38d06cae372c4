"""Fault injection for tests, in no shipped code: a Python process that has this folder on
its PYTHONPATH imports this module at start-up. With ``TEST_FAULT_WORKER_EXIT_ON=<text>``
set, a worker process dies at once (``os._exit(3)``, as a native crash would: no drain, no
commit) when it submits to its engine a request whose id contains ``<text>``; with
``TEST_FAULT_CLASSIFIER_EXIT_ON=<text>``, a classifier when it routes a message whose
bytes contain ``<text>``."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

WORKER_MARKER = os.environ.get("TEST_FAULT_WORKER_EXIT_ON", "")
CLASSIFIER_MARKER = os.environ.get("TEST_FAULT_CLASSIFIER_EXIT_ON", "").encode()


def _patch_worker(module: ModuleType) -> None:
    submit = module.Worker._submit

    def _submit(self: Any, request: Any) -> Any:
        if WORKER_MARKER in request.id:
            os._exit(3)
        return submit(self, request)

    module.Worker._submit = _submit


def _patch_classifier(module: ModuleType) -> None:
    route = module.Classifier.route

    async def _route(self: Any, records: Any) -> Any:
        if any(CLASSIFIER_MARKER in (record.value or b"") for record in records):
            os._exit(3)
        return await route(self, records)

    module.Classifier.route = _route


PATCHES = {}
if WORKER_MARKER:
    PATCHES["binbaton.workers.worker"] = _patch_worker
if CLASSIFIER_MARKER:
    PATCHES["binbaton.service.classifier.service"] = _patch_classifier


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


if PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
