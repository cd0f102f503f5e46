"""Blind A/B preferences: one JSON file of listening trials, written whole after every vote (never half-written),
and the running tally per pair of models."""

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

_WRITE_LOCK = threading.Lock()  # votes from several browser sessions append to one file


def record_preference(path, played, preferred, settings) -> list:
    """Append one trial (the models in the order they were played, the one preferred, the shared settings) to the
    JSON list at `path`; returns every trial so far."""
    if preferred not in played:
        raise ValueError(f"the preferred model {preferred!r} was not one of the pair {played}")
    trial = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "played": list(played), "preferred": preferred,
             "settings": settings}
    with _WRITE_LOCK:
        trials = read_preferences(path) + [trial]
        temporary = Path(f"{path}.partial")
        temporary.write_text(json.dumps(trials, indent=1) + "\n")
        os.replace(temporary, path)  # the old file stays whole until the new one is
    return trials


def read_preferences(path) -> list:
    path = Path(path)
    if not path.exists():
        return []
    try:
        trials = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not the JSON list of trials this page writes ({error}); move it away") from None
    if not isinstance(trials, list):
        raise ValueError(f"{path} is not the JSON list of trials this page writes; move it away")
    return trials


def tally(trials) -> list:
    """[(model, other model, trials of the pair, times model was preferred, times the other was)], one row per pair
    of models that met, in a stable order."""
    pairs = Counter()
    wins = Counter()
    for trial in trials:
        pair = tuple(sorted(trial["played"]))
        pairs[pair] += 1
        wins[pair, trial["preferred"]] += 1
    return [(first, second, count, wins[(first, second), first], wins[(first, second), second])
            for (first, second), count in sorted(pairs.items())]


def tally_markdown(trials) -> str:
    rows = tally(trials)
    if not rows:
        return "No blind trials yet."
    lines = ["| model A | model B | trials | A preferred | B preferred |", "|---|---|---|---|---|"]
    lines += [f"| {first} | {second} | {count} | {first_wins} | {second_wins} |"
              for first, second, count, first_wins, second_wins in rows]
    return "\n".join(lines)
