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


def test_readme_layout_table_lists_the_tree():
    """Every tracked root module and folder has a row, and every row names something that exists."""
    layout = README.split("## Repository layout", 1)[1].split("\n## ", 1)[0]
    listed = {cell.rstrip("/") for cell in re.findall(r"^\| `([^`]+)` \|", layout, re.MULTILINE)}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    root_entries = {path.split("/", 1)[0] for path in tracked if not path.startswith(".")}
    root_entries = {entry for entry in root_entries if entry.endswith(".py") or "/" in entry or (ROOT / entry).is_dir()}
    assert root_entries == listed
    for package in ("data", "training", "generation", "comparison"):
        assert (ROOT / package / "__init__.py").read_text().startswith('"""')
