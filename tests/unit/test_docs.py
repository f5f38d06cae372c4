"""The documentation against the code: README's tables (every flag with its variable,
commands and default; every error code) and docs/structure.md (every module), so neither
drifts from the one place each thing is declared."""

from __future__ import annotations

import re
from pathlib import Path

from binbaton.schemas.errors import ErrorCode
from binbaton.service.app.cli import command_flags
from binbaton.service.app.commands import SUMMARIES
from binbaton.service.app.flags import Flag

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
STRUCTURE = (ROOT / "docs" / "structure.md").read_text()
PACKAGE_DIRS = ("schemas", "service", "workers", "kernels", "bench")
COMMANDS = [name for name in SUMMARIES if name not in ("bench", "train-predictor")]


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")]
            for line in text.splitlines() if line.startswith("| ")]
    return rows[1:]  # past the header


def shown(flag: Flag) -> str:
    """How a plain default appears in the table."""
    if isinstance(flag.default, bool):
        return f"`{str(flag.default).lower()}`"
    if isinstance(flag.default, float):
        return f"`{flag.default:g}`"
    return f"`{flag.default}`"


def test_the_configuration_table_is_every_flag_with_its_variable_commands_and_default() -> None:
    flags: dict[str, Flag] = {}
    commands: dict[str, list[str]] = {}
    for command in COMMANDS:
        for flag in command_flags(command):
            flags.setdefault(flag.name, flag)
            commands.setdefault(flag.name, []).append(command)
    rows = {row[0].strip("`").removeprefix("--"): row
            for row in table_rows(section("Configuration"))}
    assert rows.keys() == flags.keys()
    for name, (option, variable, default, listed, _) in rows.items():
        flag = flags[name]
        assert (option, variable) == (f"`{flag.option}`", f"`{flag.env}`")
        assert listed.split(", ") == commands[name], name
        if flag.default is not None:
            assert shown(flag) in default, name


def test_the_messages_section_lists_every_error_code() -> None:
    documented = {re.fullmatch(r"`(\w+)`", row[0]).group(1)  # type: ignore[union-attr]
                  for row in table_rows(section("Messages")) if len(row) == 3}
    assert documented == {code.value for code in ErrorCode}


def test_structure_has_a_line_for_every_module() -> None:
    modules = [path.relative_to(ROOT).as_posix() for folder in PACKAGE_DIRS
               for path in (ROOT / folder).rglob("*.py") if path.name != "__init__.py"]
    missing = [module for module in modules if f"`{module}`" not in STRUCTURE]
    assert not missing, f"docs/structure.md has no line for {missing}"
