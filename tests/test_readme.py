"""The README and the docs stay true: the README is a short front door whose test command CI runs and whose version
floors are pyproject's; the preset table in docs/model.md is what the command prints; the layout table in
docs/architecture.md names every folder, root module and package module of the tree."""

import fnmatch
import pathlib
import re
import subprocess
import sys
import tomllib

from presets_table import presets_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MODEL_PAGE = (ROOT / "docs" / "model.md").read_text()
ARCHITECTURE_PAGE = (ROOT / "docs" / "architecture.md").read_text()


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
    assert "transformers==5.10.1" in floors and len(floors) >= 6
    supported = README.split("Supported releases:", 1)[1].split("\n\n", 1)[0]
    for floor in floors:
        name, version = floor.split("==")
        assert f"{name} {version}+" in supported


def test_readme_is_a_short_front_door():
    assert len(README.splitlines()) <= 250 and len(README) <= 20_000


def test_preset_table_in_the_model_page_is_what_presets_table_prints():
    assert presets_table() in MODEL_PAGE


def layout_rows():
    """The layout table of docs/architecture.md: {first cell without backticks and trailing '/': the row}."""
    layout = ARCHITECTURE_PAGE.split("## Repository layout", 1)[1].split("\n## ", 1)[0]
    return {name.rstrip("/"): row for name, row in re.findall(r"^\| `([^`]+)` \|(.*)$", layout, re.MULTILINE)}


def tracked_files():
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_layout_table_lists_the_tree():
    """Every tracked root module and folder has a row, and every row names something that exists."""
    root_entries = {path.split("/", 1)[0] for path in tracked_files() if not path.startswith(".")}
    root_entries = {entry for entry in root_entries if entry.endswith(".py") or (ROOT / entry).is_dir()}
    assert root_entries == set(layout_rows())
    for package in ("data", "training", "generation", "comparison", "cli", "metrics"):
        assert (ROOT / package / "__init__.py").read_text().startswith('"""')


def test_layout_table_names_every_module_of_each_folder():
    """A folder's row names each of its modules (or sub-folders), so a new file gets a line where newcomers look."""
    rows = layout_rows()
    missing = []
    for path in tracked_files():
        folder, _, inside = path.partition("/")
        if not inside or folder in ("tests", "docs") or folder.startswith(".") or inside.endswith("__init__.py"):
            continue
        first, _, deeper = inside.partition("/")
        name = f"{first}/" if deeper else first
        if f"`{name}`" not in rows.get(folder, ""):
            missing.append(f"{folder}/{name}")
    assert not missing, f"docs/architecture.md's layout table does not name {missing}"


def test_an_installed_package_holds_every_root_module_and_package():
    """`pip install .` ships what the tree imports: every root module is one of pyproject's py-modules and every
    package folder (bench/ and tests/ aside: they run from a checkout) matches its package patterns."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    root_modules = {path[:-3] for path in tracked_files() if "/" not in path and path.endswith(".py")}
    assert set(setuptools["py-modules"]) == root_modules
    packages = {path.split("/", 1)[0] for path in tracked_files() if path.endswith("/__init__.py")} - {"bench", "tests"}
    patterns = setuptools["packages"]["find"]["include"]
    assert all(any(fnmatch.fnmatch(package, pattern) for pattern in patterns) for package in packages), packages


# A timing, rate or speed-up ratio: what a benchmark measures on one machine.
MEASUREMENT = re.compile(
    r"\b\d+(\.\d+)?\s?(ms|us|µs|ns|frames/s|GB/s|MB/s)\b|\b\d+(\.\d+)?x (faster|slower)|\b\d+(\.\d+)?% (of|faster|slower)"
)


def test_shipped_model_files_quote_no_measurement():
    """The *_music_hybrid.py files travel inside every checkpoint, where a measured figure goes stale: a comment
    says why, and the figure lives in docs/performance.md under the command that measures it."""
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(ROOT.glob("*_music_hybrid.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if MEASUREMENT.search(line)
    ]
    assert not found, "\n".join(found)
