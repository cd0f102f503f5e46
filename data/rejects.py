"""Why an input was skipped: a fixed vocabulary, the exception that carries it, and rejects.jsonl."""

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass

REJECT_REASONS = {
    "unreadable": "an audio file that could not be decoded (truncated, corrupt, unreadable)",
    "empty": "no bytes, or no samples once decoded",
    "not_audio": "not an audio format libsndfile knows",
    "silent": "RMS below the silence threshold (default -60 dBFS)",
    "too_short": "shorter than the minimum duration (default 1 s)",
    "missing": "listed (metadata, dataset row) but the file is absent",
}


@dataclass(frozen=True)
class Reject:
    path: str | None
    track_id: str
    reason: str
    detail: str


class RejectedInput(Exception):
    """Raised while reading a track; the pipeline records it and moves on."""

    def __init__(self, reason, detail):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {sorted(REJECT_REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def write_rejects(path, rejects):
    """Write rejects.jsonl (sorted by track id, so reruns give the same file) via temp + rename."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        for reject in sorted(rejects, key=lambda reject: reject.track_id):
            file.write(json.dumps(asdict(reject)) + "\n")
    os.replace(temporary, path)


def read_rejects(path):
    with open(path) as file:
        return [Reject(**json.loads(line)) for line in file if line.strip()]


def count_by_reason(rejects):
    """{reason: count} for every reason in the vocabulary, zeros included, in vocabulary order."""
    counts = Counter(reject.reason for reject in rejects)
    return {reason: counts[reason] for reason in REJECT_REASONS}
