"""The work folder of a build (OUTPUT_DIR/_build): what is finished survives a kill.

Each process appends parts: an Arrow file of rows, then a JSON commit naming the tracks it
finished (encoded or rejected), the rejects and the decoder warnings. Only committed parts count, so a rerun
skips exactly the finished tracks. A process that finishes its shard writes a marker with
a fingerprint of that shard; the merge reads every committed part, from any process."""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

from .dataset_io import codes_table
from .rejects import DecoderWarning, Reject


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while tracks were encoded, after the tracks finished so far were committed."""

    def __init__(self, kept: int, total: int | None):
        super().__init__()
        self.kept = kept  # tracks committed in OUTPUT_DIR/_build (by every process, this run or earlier ones)
        self.total = total  # tracks of the source, None when streamed

    def message(self, output_dir) -> str:
        if self.total is None:
            return (f"interrupted: {self.kept} tracks are done and kept in {output_dir}/_build (nothing half-written); "
                    "rerun the same command to continue")
        return (f"interrupted: {self.kept} of {self.total} tracks are done and kept in {output_dir}/_build (nothing "
                f"half-written); rerun the same command to encode the other {self.total - self.kept}")


def _write_atomically(path, write):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes may write the same file
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # an interrupt while writing leaves the previous state, no stray temporary file
        temporary.unlink(missing_ok=True)
        raise


def shard_fingerprint(track_ids):
    return hashlib.sha256("\n".join(sorted(track_ids)).encode()).hexdigest()


class WorkDir:
    def __init__(self, root):
        self.root = Path(root)
        self.parts = self.root / "parts"

    def check_claim(self, run_config):
        """Whether finished work made with `run_config` is here to resume (True) or none at all (False); raise
        ValueError where work made with other settings (those that change the codes) would be mixed in.
        Writes nothing. Only committed parts are work: a run that failed or was refused before committing one
        leaves no claim on the folder."""
        output_dir = self.root.parent
        if not self.root.exists():
            # Only another entry is foreign: the processes of one launch claim together, and another may have
            # created this folder since the check above.
            if output_dir.is_dir() and any(path.name != self.root.name for path in output_dir.iterdir()):
                raise ValueError(f"--output_dir {output_dir} is not empty and holds no earlier build; use an empty one")
            return False
        path = self.root / "config.json"
        if not path.exists() or not self.committed_parts():
            return False
        previous = json.loads(path.read_text())
        changed = sorted(key for key in previous.keys() | run_config.keys() if previous.get(key) != run_config.get(key))
        if changed:
            details = ", ".join(f"{key}: {previous.get(key)!r} -> {run_config.get(key)!r}" for key in changed)
            raise ValueError(
                f"{self.root} holds work made with other settings ({details}); "
                "use another --output_dir, or --overwrite to discard that work"
            )
        return True

    def claim(self, run_config):
        """Create the folder for `run_config` (after check_claim); a folder holding no committed part takes the new
        settings, and the codec and notes of the earlier attempt go with its old ones."""
        resuming = self.check_claim(run_config)
        self.parts.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for stale in [self.root / "codec.json", self.root / "notes.json", *self.root.glob("done-rank*.json")]:
                stale.unlink(missing_ok=True)
            settings = json.dumps(run_config, indent=2).encode()
            _write_atomically(self.root / "config.json", lambda file: file.write(settings))

    def discard(self):
        """Remove the work folder, and the output folder too when nothing else is in it."""
        shutil.rmtree(self.root, ignore_errors=True)
        output_dir = self.root.parent
        if output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()

    def run_config(self):
        return json.loads((self.root / "config.json").read_text())

    def write_part(self, rank, rows, finished_track_ids, rejects, decoder_warnings):
        """Commit rows and the finished tracks (arrow first, then the JSON that makes it count)."""
        name = f"rank{rank:03d}-{uuid.uuid4().hex[:12]}"
        arrow_name = None
        if rows:
            arrow_name = f"{name}.arrow"
            table = codes_table(rows)

            def write_arrow(file):
                with pa.ipc.new_stream(file, table.schema) as writer:
                    writer.write_table(table)

            _write_atomically(self.parts / arrow_name, write_arrow)
        commit = {"arrow": arrow_name, "tracks": list(finished_track_ids), "rejects": [vars(r) for r in rejects]}
        commit["decoder_warnings"] = [vars(warning) for warning in decoder_warnings]
        _write_atomically(self.parts / f"{name}.json", lambda file: file.write(json.dumps(commit).encode()))

    def committed_parts(self):
        """The commits, in name order (the order of parts does not change the merged result)."""
        return [json.loads(path.read_text()) for path in sorted(self.parts.glob("*.json"))]

    def finished_track_ids(self):
        return {track_id for part in self.committed_parts() for track_id in part["tracks"]}

    def arrow_files(self):
        return [str(self.parts / part["arrow"]) for part in self.committed_parts() if part["arrow"]]

    def rejects(self):
        return [Reject(**reject) for part in self.committed_parts() for reject in part["rejects"]]

    def decoder_warnings(self):
        """Every committed track's decoder warnings (a part from before they were collected has none)."""
        parts = self.committed_parts()
        return [DecoderWarning(**warning) for part in parts for warning in part.get("decoder_warnings", [])]

    def save_codec_identity(self, identity):
        _write_atomically(self.root / "codec.json", lambda file: file.write(json.dumps(identity, indent=2).encode()))

    def codec_identity(self):
        path = self.root / "codec.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_notes(self, notes):
        """Facts about the source (counts, anomalies) for the dataset card."""
        _write_atomically(self.root / "notes.json", lambda file: file.write(json.dumps(notes).encode()))

    def notes(self):
        path = self.root / "notes.json"
        return json.loads(path.read_text()) if path.exists() else []

    def mark_shard_done(self, rank, world_size, shard_track_ids):
        marker = {"rank": rank, "world_size": world_size, "tracks": len(shard_track_ids)}
        marker["fingerprint"] = shard_fingerprint(shard_track_ids)
        path = self.root / f"done-rank{rank:03d}-of{world_size:03d}.json"
        _write_atomically(path, lambda file: file.write(json.dumps(marker).encode()))

    def shard_markers(self, world_size):
        """{rank: marker} of the processes of a `world_size`-process run that finished."""
        markers = {}
        for path in self.root.glob(f"done-rank*-of{world_size:03d}.json"):
            marker = json.loads(path.read_text())
            markers[marker["rank"]] = marker
        return markers

    def latest_world_size(self):
        """The process count of the most recent marker, or None when no shard ever finished."""
        paths = sorted(self.root.glob("done-rank*-of*.json"), key=lambda path: path.stat().st_mtime)
        return json.loads(paths[-1].read_text())["world_size"] if paths else None
