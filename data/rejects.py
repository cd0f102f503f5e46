"""The per-track report of a build: why an input was skipped (a fixed vocabulary, the exception that carries it,
rejects.jsonl) and what its decoder warned about (decoder_warnings.jsonl)."""

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


@dataclass(frozen=True)
class DecoderWarning:
    """What the decoder printed while reading a track, kept or rejected (libmpg123's notes on damaged frames)."""

    path: str | None
    track_id: str
    messages: list[str]


class RejectedInput(Exception):
    """Raised while reading a track; the pipeline records it and moves on."""

    def __init__(self, reason, detail):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {sorted(REJECT_REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def write_report(path, entries):
    """Write rejects.jsonl or decoder_warnings.jsonl (sorted by track id, so reruns give the same file) via temp +
    rename."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        for entry in sorted(entries, key=lambda entry: entry.track_id):
            file.write(json.dumps(asdict(entry)) + "\n")
    os.replace(temporary, path)


def read_rejects(path):
    return _read_report(path, Reject)


def read_decoder_warnings(path):
    return _read_report(path, DecoderWarning)


def _read_report(path, entry_type):
    with open(path) as file:
        return [entry_type(**json.loads(line)) for line in file if line.strip()]


def count_by_reason(rejects):
    """{reason: count} for every reason in the vocabulary, zeros included, in vocabulary order."""
    counts = Counter(reject.reason for reject in rejects)
    return {reason: counts[reason] for reason in REJECT_REASONS}
