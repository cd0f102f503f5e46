"""Print the oldest release of each dependency that pyproject.toml admits (name==floor), one per line, for pip."""

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

for requirement in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
    floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,]+)(,.*)?", requirement)
    if floor:
        print(f"{floor[1]}=={floor[2]}")
