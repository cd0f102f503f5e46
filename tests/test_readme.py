"""The README stays true: CI runs its test command, and its preset table is what the command prints."""

import pathlib
import re

from presets_table import presets_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quickstart_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", quickstart, re.DOTALL)
            for line in block.splitlines() if line and not line.startswith("#")]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_command():
    commands = quickstart_commands()
    assert len(commands) == 2
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci_script.splitlines()


def test_readme_preset_table_is_what_presets_table_prints():
    assert presets_table() in README
