"""The project's data sets live beside the repository (../shared/data), as on CI; a test
that reads one skips, saying so, where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest


def needs_data(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(),
                              reason=f"needs {path} (../shared/data beside the repository)")
