"""The README stays true: CI runs its test command, its version floors are pyproject's, and its preset table is what
the command prints."""

import pathlib
import re
import subprocess
import sys

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


def test_readme_states_the_version_floors_that_ci_tests():
    floors = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "oldest_requirements.py")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "transformers==5.1" in floors and len(floors) >= 6
    supported = README.split("Supported releases:", 1)[1].split("\n\n", 1)[0]
    for floor in floors:
        name, version = floor.split("==")
        assert f"{name} {version}+" in supported


def test_readme_preset_table_is_what_presets_table_prints():
    assert presets_table() in README
