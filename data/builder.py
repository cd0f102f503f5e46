"""The work behind `python -m data.build_dataset` (options and entry points: data/build_dataset.py).

Flow: check the options, the output folder, the source and the codec (all before anything is written: a refused
or failed first run leaves the folder as it was and claims no settings), then give each process every n-th
track, decode in worker threads, encode on the process's device, commit parts to OUTPUT_DIR/_build as work is done
(a killed run resumes where it stopped), and when every shard is done assemble the splits, rejects.jsonl,
decoder_warnings.jsonl, codec.json and README.md in OUTPUT_DIR. Under `accelerate launch` nothing waits on a
collective: the last process to finish merges, or run the same command with --merge_only.
"""

import fcntl
import itertools
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cli.paths import check_codec_available

from processing_music_hybrid import (
    CODEBOOK_SIZE,
    HOP_LENGTH,
    PRETRAINED_MODEL_ID,
    SAMPLE_RATE,
    dac_package_identity,
    load_codec,
    num_frames_for,
    plan_windows,
    pretrained_codec_identity,
    random_codec_identity,
)

from .audio import plan_segments, read_track
from .codec_fit import fit_on_training_split, save_fit
from .dataset_io import (
    CODES_FEATURES,
    dataset_card,
    push_codes_dataset,
    save_codes_dataset,
    with_text_column,
)
from .decoder_messages import python_stderr_off_fd2
from .parts import BuildInterrupted, WorkDir, shard_fingerprint
from .rejects import DecoderWarning, Reject, RejectedInput, count_by_reason, write_report
from .sources import (
    default_fma_metadata,
    fma_tracks,
    folder_tracks,
    hf_tracks,
    procedural_tracks,
)
from .splits import make_split_assigner

# processing_music_hybrid's own message, when the loading fails later, names the same ways out.
CODEC_FIX = ("connect to the Hugging Face Hub once (the weights are cached), pass a downloaded copy with --codec_model "
             "PATH, or choose random weights explicitly with --codec random --codec_seed N (its codes carry no musical "
             "meaning)")
COMMIT_EVERY_SECONDS = 300  # a kill loses at most this much encoding work (or --part_tracks tracks)


def run_build(args):
    source = _check_arguments(args)
    state = _process_state(args.device)
    output_dir = Path(args.output_dir)
    work = WorkDir(output_dir / "_build")
    if args.merge_only:
        return _merge_when_complete(args, work, None, state)
    if args.overwrite:
        if state.num_processes > 1:
            raise ValueError(f"--overwrite with one process only (or delete {args.output_dir} first)")
        _check_own_output(output_dir)
    run_config = _run_config(args, source)
    resuming = not args.overwrite and work.check_claim(run_config)
    tracks, notes = _list_tracks(args, source, state.is_main_process)
    tracks = _without_unsplit_tracks(args, run_config, tracks, notes)
    # The codec before any decoding: an unreachable one (offline, no package) is refused now, not after hours.
    device, batch_size = _device_and_batch_size(args, state)
    identity = work.codec_identity() if resuming else None
    fit = None
    if args.codec == "fitted" and identity is None:
        assign = _split_rule(args, run_config)[0]
        fit = fit_on_training_split(args, tracks, assign, lambda track: _read(args, track)[0], state.is_main_process)
    codec_options = {"device": device, "batch_size": batch_size, "window_seconds": args.window_seconds,
                     "window_overlap_seconds": args.window_overlap_seconds, "location": work.root}
    codec = None
    if fit is None:
        requested = identity or _requested_codec_identity(args)
        if requested["backend"] == "transformers":  # without a network: one Hub look-up, not the loader's retries
            check_codec_available(requested["model_id"], "--codec_model", fix=CODEC_FIX)
        codec = load_codec(requested, **codec_options)
    if args.overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    work.claim(run_config)
    if fit is not None:
        codec = load_codec(save_fit(work.root, fit, args.codec_seed), **codec_options)
    work.save_codec_identity(codec.identity)  # with the resolved Hub revision
    if notes:
        work.save_notes(notes)
    all_track_ids = _ShardEncoder(args, work, state, codec).run(tracks)
    try:
        return _merge_when_complete(args, work, all_track_ids, state)
    finally:
        if state.num_processes > 1:
            state.destroy_process_group()  # local teardown, no barrier: processes may end hours apart


def _check_own_output(output_dir):
    """--overwrite deletes an output folder, but only one this command wrote."""
    if not output_dir.exists():
        return
    ours = (output_dir / "_build").is_dir() or (output_dir / "codec.json").is_file()
    if not ours:
        raise ValueError(f"refusing to delete {output_dir}: it was not written by data.build_dataset")


def _device_and_batch_size(args, state):
    device = args.device or str(state.device)
    # On CPU a batch buys no speed (measured) and costs ~80 MB per second of audio in flight.
    return device, args.batch_size or (1 if device.startswith("cpu") else 8)


def _check_arguments(args):
    """Return the source kind; raise ValueError for contradictory or impossible options."""
    given = {"folder": args.audio_dir, "fma": args.fma_dir, "hf": args.hf_dataset}
    given = [kind for kind, value in given.items() if value]
    if len(given) > 1:
        raise ValueError(f"give one source, not {given}")
    source = args.source or (given[0] if given else "procedural")
    needs = {"folder": "--audio_dir", "fma": "--fma_dir", "hf": "--hf_dataset"}
    if source in needs and source not in given:
        raise ValueError(f"--source {source} needs {needs[source]}")
    if given and source != given[0]:
        raise ValueError(f"--source {source} contradicts the {needs[given[0]]} given")
    if args.segment != "whole" and args.segment_seconds < args.min_seconds:
        raise ValueError(f"--segment_seconds ({args.segment_seconds}) must be >= --min_seconds ({args.min_seconds})")
    positive = {"part_tracks": args.part_tracks, "window_seconds": args.window_seconds}
    positive |= {"procedural_seconds": args.procedural_seconds, "segment_seconds": args.segment_seconds}
    positive |= {"batch_size": 1 if args.batch_size is None else args.batch_size}
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")
    if args.num_workers < 0 or (args.max_tracks is not None and args.max_tracks < 0):
        raise ValueError("--num_workers and --max_tracks cannot be negative")
    if args.split_mode == "fma" and not (args.fma_metadata or source == "fma"):
        raise ValueError("--split_mode fma needs an FMA source or --fma_metadata")
    if args.streaming and source != "hf":
        raise ValueError("--streaming applies to --hf_dataset only")
    if args.text_column and source != "hf":
        raise ValueError("--text_column applies to --hf_dataset only (the procedural and FMA sources describe their "
                         "tracks themselves)")
    if args.codec == "fitted" and args.streaming:
        raise ValueError("--codec fitted reads the training split before encoding it: drop --streaming")
    if args.codec == "fitted" and not 1 <= args.codec_centroids <= CODEBOOK_SIZE:
        raise ValueError(f"--codec_centroids must lie in [1, {CODEBOOK_SIZE}], got {args.codec_centroids}")
    return source


def _process_state(device):
    """Accelerate's view of this process (rank, process count, device). On a machine without
    CUDA, `accelerate launch --multi_gpu` still starts several processes; cpu=True makes
    them form a CPU (gloo) group instead of each believing it is alone."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()))


def _requested_codec_identity(args):
    if args.codec == "fitted":  # what is asked for; the fit's identity adds its parameters' SHA-256
        return {"backend": "fitted", "seed": args.codec_seed, "num_centroids": args.codec_centroids}
    if args.codec == "random":
        return random_codec_identity(args.codec_seed, small=args.codec_small)
    if args.codec == "dac":
        return dac_package_identity(revision=args.codec_revision or "latest")
    return pretrained_codec_identity(args.codec_model or PRETRAINED_MODEL_ID, args.codec_revision)


def _run_config(args, source):
    """The settings that change the codes of a track; parts made with others cannot be mixed."""
    options = {
        "procedural": ["procedural_seconds", "procedural_seed"],
        "folder": ["audio_dir"],
        "fma": ["fma_dir", "fma_metadata", "fma_subset"],
        "hf": ["hf_dataset", "hf_config", "hf_split", "audio_column", "id_column", "genre_column", "text_column"],
    }[source]
    settings = ["segment", "segment_seconds", "min_seconds", "silence_db", "loudness_lufs"]
    settings += ["window_seconds", "window_overlap_seconds"]
    config = {"source": source, "codec": _requested_codec_identity(args)}
    config |= {name: getattr(args, name) for name in options + settings}
    for name in ("audio_dir", "fma_dir", "fma_metadata"):
        if config.get(name):
            config[name] = str(Path(config[name]).resolve())
    return config


def _list_tracks(args, source, verbose):
    """(the tracks, as a list sorted by id or, for a streamed dataset, an iterator; notes for the dataset card)."""
    notes = []
    if source == "procedural":
        tracks = procedural_tracks(args.procedural_tracks, args.procedural_seconds, args.procedural_seed)
        notes.append("Descriptions (`text`): the generator's own account of what it played (style, key, mode, tempo, "
                     "instruments), true of every track.")
    elif source == "folder":
        tracks = folder_tracks(args.audio_dir)
    elif source == "fma":
        tracks, counts = fma_tracks(args.fma_dir, args.fma_metadata, args.fma_subset)
        note = "FMA: {files} files ({in_metadata} in tracks.csv, {not_in_metadata} not in it, kept without genre); "
        note += "{listed_but_missing} tracks of the subset listed in tracks.csv but missing on disk (rejected)"
        notes.append(note.format(**counts))
        notes.append("Descriptions (`text`): built from FMA's metadata (top genre, sub-genres, title). These are tags "
                     "the uploaders chose, not captions of the audio: they say what a track was filed under, not "
                     "what it sounds like.")
        if verbose:
            print(note.format(**counts), file=sys.stderr)
    else:
        tracks = hf_tracks(
            args.hf_dataset,
            args.hf_config,
            args.hf_split,
            args.audio_column,
            args.id_column,
            args.genre_column,
            args.streaming,
            args.text_column,
        )
        if args.text_column:
            notes.append(f"Descriptions (`text`): the {args.text_column!r} column of {args.hf_dataset}.")
    if args.max_tracks is not None:
        tracks = tracks[: args.max_tracks] if isinstance(tracks, list) else itertools.islice(tracks, args.max_tracks)
    if isinstance(tracks, list) and not tracks:
        raise ValueError("the source has no audio files")
    return tracks, notes


class _ShardEncoder:
    """Decode and encode this process's shard, committing parts as it goes."""

    def __init__(self, args, work, state, codec):
        self.args, self.work, self.codec = args, work, codec
        self.rank, self.world_size = state.process_index, state.num_processes
        self.batch_size = codec.batch_size
        self.show_progress = state.is_local_main_process
        self.pending = []  # (track, samples) decoded, waiting for the codec
        self.rows, self.finished, self.rejects, self.decoder_warnings = [], [], [], []
        self.last_commit = time.monotonic()

    def run(self, tracks):
        """Process the shard; return every track id of the source, in listing order."""
        done = self.work.finished_track_ids()
        all_ids, shard_ids, seen = [], [], set()

        def todo():
            for position, track in enumerate(tracks):
                if track.track_id in seen:
                    raise ValueError(f"track id {track.track_id!r} occurs twice in the source")
                seen.add(track.track_id)
                all_ids.append(track.track_id)
                if position % self.world_size == self.rank:
                    shard_ids.append(track.track_id)
                    if track.track_id not in done:
                        yield track

        total = None
        if isinstance(tracks, list):
            mine = tracks[self.rank :: self.world_size]
            total = sum(track.track_id not in done for track in mine)
        where = f" [process {self.rank}/{self.world_size}]" if self.world_size > 1 else ""
        # The mp3 decoder's warnings go to each track's report, and the bars (Python's stderr) to the terminal.
        with python_stderr_off_fd2():
            self.decode_bar = tqdm(total=total, desc=f"decode{where}", unit="track", disable=not self.show_progress,
                                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self.encode_bar = tqdm(desc=f"encode{where}", unit="s audio", disable=not self.show_progress)
            decoded = _ordered_parallel_map(self._timed_read, todo(), self.args.num_workers)
            try:
                # closed on an interrupt too, so that no decoding thread still holds fd 2 once sys.stderr is back on it
                with self.decode_bar, self.encode_bar, closing(decoded):
                    self._encode_decoded(decoded)
            except KeyboardInterrupt:
                self._commit(only_finished=True)  # what is encoded stays done; decoded tracks are redone
                finished = self.work.finished_track_ids()
                if not isinstance(tracks, list):  # streamed: the source's length is unknown
                    raise BuildInterrupted(len(finished), None) from None
                raise BuildInterrupted(sum(track.track_id in finished for track in tracks), len(tracks)) from None
        self.work.mark_shard_done(self.rank, self.world_size, shard_ids)
        return all_ids

    def _encode_decoded(self, decoded):
        # The decode bar's rate is the decoding's own (time spent in the decoding threads), not wall time, which
        # includes encoding.
        decode_seconds = 0.0
        for track, (result, messages, seconds) in decoded:
            decode_seconds += seconds
            self.decode_bar.set_postfix_str(f"{decode_seconds / (self.decode_bar.n + 1):.2f} s/track decoding",
                                            refresh=False)
            self.decode_bar.update()
            if messages:
                self.decoder_warnings.append(DecoderWarning(track.location, track.track_id, messages))
            if isinstance(result, RejectedInput):
                self.rejects.append(Reject(track.location, track.track_id, result.reason, result.detail))
                self.finished.append(track.track_id)
            else:
                self.pending.append((track, result))
            if self._pending_windows() >= self.batch_size:
                self._encode_pending()
            if len(self.finished) >= self.args.part_tracks or self._commit_is_due():
                self._encode_pending()
                self._commit()
        self._encode_pending()
        self._commit()

    def _timed_read(self, track):
        started = time.perf_counter()
        result, messages = _read(self.args, track)
        return result, messages, time.perf_counter() - started

    def _pending_windows(self):
        window = round(self.args.window_seconds * SAMPLE_RATE / HOP_LENGTH)
        overlap = round(self.args.window_overlap_seconds * SAMPLE_RATE / HOP_LENGTH)
        return sum(len(plan_windows(num_frames_for(samples.size), window, overlap)) for _, samples in self.pending)

    def _commit_is_due(self):
        return self.finished and time.monotonic() - self.last_commit > COMMIT_EVERY_SECONDS

    def _encode_pending(self):
        if not self.pending:
            return
        codes = self.codec.encode([samples for _, samples in self.pending])
        for (track, samples), track_codes in zip(self.pending, codes, strict=True):
            track_codes = track_codes.numpy().astype(np.int16)
            segments = plan_segments(samples.size, self.args.segment, self.args.segment_seconds, self.args.min_seconds)
            for segment in segments:
                self.rows.append(
                    {
                        "codes": track_codes[:, segment.start_frame : segment.start_frame + segment.num_frames],
                        "track_id": track.track_id,
                        "start_frame": segment.start_frame,
                        "num_frames": segment.num_frames,
                        "duration": segment.duration,
                        "genre": track.genre,
                        "source": track.source,
                        "text": track.text,
                    }
                )
            self.finished.append(track.track_id)
            self.encode_bar.update(round(samples.size / SAMPLE_RATE, 2))
        self.pending = []

    def _commit(self, only_finished=False):
        """only_finished: after an interrupt, leave out the rows of a track cut short between its segments."""
        if only_finished:
            finished = set(self.finished)
            self.rows = [row for row in self.rows if row["track_id"] in finished]
        if self.finished:
            self.work.write_part(self.rank, self.rows, self.finished, self.rejects, self.decoder_warnings)
        self.rows, self.finished, self.rejects, self.decoder_warnings = [], [], [], []
        self.last_commit = time.monotonic()


def _read(args, track):
    """(the samples or a RejectedInput, what the decoder printed about the track)"""
    messages = []
    try:
        samples = read_track(
            track.fetch(),
            min_seconds=args.min_seconds,
            silence_db=args.silence_db,
            loudness_lufs=args.loudness_lufs,
            max_seconds=args.segment_seconds if args.segment == "first" else None,
            decoder_messages=messages,
        )
        return samples, messages
    except RejectedInput as rejected:
        return rejected, messages
    except Exception as error:  # one bad input must never end the run
        return RejectedInput("unreadable", f"{type(error).__name__}: {error}"), messages


def _ordered_parallel_map(function, items, num_workers):
    """Yield (item, function(item)) in input order, computing a bounded number ahead in threads
    (soundfile and soxr release the GIL while they decode and resample)."""
    if num_workers == 0:
        yield from ((item, function(item)) for item in items)
        return
    pool = ThreadPoolExecutor(num_workers)
    try:
        in_flight = deque()
        for item in items:
            in_flight.append((item, pool.submit(function, item)))
            if len(in_flight) >= 2 * num_workers:
                item, future = in_flight.popleft()
                yield item, future.result()
        while in_flight:
            item, future = in_flight.popleft()
            yield item, future.result()
    finally:  # stopped early (an interrupt): the queued items are dropped, the running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def _merge_when_complete(args, work, all_track_ids, state):
    """Merge if every shard of this run is finished, else say who is missing and return None.

    With the track list (a normal run) a shard counts only if its marker fingerprints the
    shard the list implies, so a stale marker from an earlier run never triggers a merge.
    --merge_only trusts the markers of the latest run."""
    world_size = state.num_processes if all_track_ids is not None else work.latest_world_size()
    if world_size is None:
        raise ValueError(f"nothing to merge in {work.root}: no process has finished a shard yet")
    markers = work.shard_markers(world_size)
    if all_track_ids is None:
        missing = [rank for rank in range(world_size) if rank not in markers]
    else:
        expected = {rank: shard_fingerprint(all_track_ids[rank::world_size]) for rank in range(world_size)}
        missing = [rank for rank in range(world_size) if markers.get(rank, {}).get("fingerprint") != expected[rank]]
    if missing:
        message = f"shards of processes {missing} (of {world_size}) are not finished yet"
        if args.merge_only:
            raise ValueError(f"{message}; rerun the same command for them, then --merge_only")
        print(f"{message}; the last process to finish merges (or rerun with --merge_only)", file=sys.stderr)
        return None
    with _exclusive(work.root / "merge.lock"):
        return _merge(args, work)


@contextmanager
def _exclusive(lock_path):
    """A file lock: two processes finishing together merge one after the other. The kernel
    drops it if the holder dies, so a kill never leaves a stale lock."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _merge(args, work):
    from datasets import Dataset, DatasetDict, concatenate_datasets

    run_config = work.run_config()
    assign, split_names, split_rule = _split_rule(args, run_config)
    parts = [with_text_column(Dataset.from_file(path)) for path in work.arrow_files()]  # some from before `text`
    if not parts:  # every track rejected: no dataset, and no claim on the folder (the rejects are quick to redo)
        rejects = sorted(_one_per_track(work.rejects()), key=lambda reject: reject.track_id)
        work.discard()
        raise ValueError(_no_usable_audio(rejects))
    empty = {name: [] for name in CODES_FEATURES}
    rows = concatenate_datasets(parts) if parts else Dataset.from_dict(empty, features=CODES_FEATURES)
    keys = rows.select_columns(["track_id", "start_frame"]).to_dict()
    track_ids, start_frames = keys["track_id"], keys["start_frame"]
    order = sorted(range(len(rows)), key=lambda i: (track_ids[i], start_frames[i]))
    split_of = assign(sorted(set(track_ids)))
    indices = {name: [] for name in split_names}
    previous = None
    for i in order:
        key = (track_ids[i], start_frames[i])
        if key != previous and split_of[track_ids[i]] is not None:  # equal keys: a track committed twice
            indices.setdefault(split_of[track_ids[i]], []).append(i)
        previous = key
    left_out = {track_id for track_id, split in split_of.items() if split is None}
    # datasets cannot save a split with no rows, so an empty split is left out (and said so)
    empty = [name for name, split_indices in indices.items() if not split_indices]
    dataset_dict = DatasetDict({name: rows.select(chosen) for name, chosen in indices.items() if chosen})

    rejects, decoder_warnings = _one_per_track(work.rejects()), _one_per_track(work.decoder_warnings())
    output_dir = Path(args.output_dir)
    write_report(output_dir / "rejects.jsonl", rejects)
    write_report(output_dir / "decoder_warnings.jsonl", decoder_warnings)
    reject_counts = count_by_reason(rejects)
    identity = work.codec_identity()
    notes = work.notes()
    if decoder_warnings:
        notes.append(f"{len(decoder_warnings)} tracks made the decoder print warnings (damaged mp3 frames skipped, "
                     "a wrong length header); they are listed in decoder_warnings.jsonl.")
    if left_out:
        notes.append(f"{len(left_out)} encoded tracks have no split under this split rule and are left out.")
    if empty:
        notes.append(f"Empty splits, not saved: {', '.join(empty)}.")
    card = dataset_card(dataset_dict, identity, _describe_source(run_config), split_rule, reject_counts, notes)
    save_codes_dataset(dataset_dict, output_dir, identity, card, codec_location=work.root)
    _print_summary(dataset_dict, reject_counts, notes, output_dir)
    if args.push_to_hub:
        push_codes_dataset(output_dir, args.push_to_hub, private=args.hub_private)
    return DatasetDict.load_from_disk(str(output_dir))


def _no_usable_audio(rejects):
    """'no usable audio: 1 file rejected (song.mp3: a text file, not audio (29 bytes))', with counts by reason when
    there are several."""
    if not rejects:
        return "no usable audio: the source gave no track"
    first = rejects[0]
    example = f"{Path(first.path).name if first.path else first.track_id}: {first.detail}"
    if len(rejects) == 1:
        return f"no usable audio: 1 file rejected ({example})"
    reasons = ", ".join(f"{reason} {count}" for reason, count in count_by_reason(rejects).items() if count)
    return f"no usable audio: {len(rejects)} files rejected ({reasons}; the first: {example})"


def _one_per_track(entries):
    """The first entry of each track (a track committed twice, by a process killed after its commit, has two)."""
    return list({entry.track_id: entry for entry in reversed(entries)}.values())


def _split_rule(args, run_config):
    """make_split_assigner for the options, FMA's tracks.csv found beside --fma_dir when not given."""
    fma_metadata = args.fma_metadata
    if args.split_mode == "fma" and not fma_metadata and run_config.get("fma_dir"):
        fma_metadata = default_fma_metadata(Path(run_config["fma_dir"]))
    return make_split_assigner(args.split_mode, args.split_seed, args.validation_fraction, fma_metadata,
                               args.split_file)


def _without_unsplit_tracks(args, run_config, tracks, notes):
    """Under a split rule that leaves tracks out (FMA's split, a split file), those tracks are not encoded at all."""
    assign, _, _ = _split_rule(args, run_config)  # also checks tracks.csv or the split file before any work
    if args.split_mode == "random":
        return tracks
    if not isinstance(tracks, list):
        return (track for track in tracks if assign([track.track_id])[track.track_id] is not None)
    split_of = assign(sorted(track.track_id for track in tracks))
    kept = [track for track in tracks if split_of[track.track_id] is not None]
    if len(kept) < len(tracks):
        notes.append(f"{len(tracks) - len(kept)} tracks have no split under this split rule and were not encoded.")
    if not kept:
        raise ValueError(f"no track of the source has a split under --split_mode {args.split_mode}")
    return kept


def _describe_source(run_config):
    details = {"folder": "audio_dir", "fma": "fma_dir", "hf": "hf_dataset"}
    if run_config["source"] == "procedural":
        return f"procedural music (seed {run_config['procedural_seed']}, {run_config['procedural_seconds']} s tracks)"
    return f"{run_config['source']} {Path(run_config[details[run_config['source']]]).name}"


def _print_summary(dataset_dict, reject_counts, notes, output_dir):
    lines = [f"codes dataset written to {output_dir}"]
    for name, dataset in dataset_dict.items():
        hours = float(np.sum(dataset["duration"], dtype=np.float64)) / 3600 if len(dataset) else 0.0
        lines.append(f"  {name}: {len(set(dataset['track_id']))} tracks, {len(dataset)} rows, {hours:.3f} h")
    lines.append("  rejected: " + ", ".join(f"{reason} {count}" for reason, count in reject_counts.items()))
    lines.append(f"  details in {output_dir / 'rejects.jsonl'}")
    lines += [f"  {note}" for note in notes]
    print("\n".join(lines), file=sys.stderr)
