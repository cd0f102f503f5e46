"""Where tracks come from: an FMA tree with its metadata, a plain folder of audio files, a
Hugging Face dataset (downloaded, on disk, or streamed), or the procedural generator.

Every source yields TrackRefs: an id, a genre, where the audio lives (for the rejects
report), a `fetch()` that returns what audio.read_track takes (a path, encoded bytes,
or (samples, rate)), and a description in words where the source has one (`text`). Listed sources return a list sorted by track id; a streamed Hugging
Face dataset returns an iterator, read once, in stream order."""

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from processing_music_hybrid import SAMPLE_RATE

from .procedural_music import generate_track, track_plan

AUDIO_EXTENSIONS = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".aif", ".aiff"}
# Which FMA subsets each published archive holds (fma_medium includes fma_small, ...).
FMA_SUBSETS = {"small": {"small"}, "medium": {"small", "medium"}, "large": {"small", "medium", "large"}}
FMA_SUBSETS["full"] = FMA_SUBSETS["large"]


@dataclass(frozen=True)
class TrackRef:
    track_id: str
    source: str
    genre: str | None
    location: str | None
    fetch: Callable[[], object]
    text: str | None = None



def procedural_tracks(num_tracks=8, seconds=8.0, seed=0):
    """Generated tracks; the style name is the genre, and the generator's own account of what it played (style,
    key, mode, tempo, instruments) the description."""

    def fetch(index):
        samples, _ = generate_track(seed, index, seconds)
        return samples, SAMPLE_RATE

    plans = [track_plan(seed, i) for i in range(num_tracks)]
    return [
        TrackRef(f"procedural-{seed}-{i:05d}", "procedural", plan.style, None, lambda i=i: fetch(i), plan.description())
        for i, plan in enumerate(plans)
    ]


def folder_tracks(root):
    """Audio files under `root`, recursively; the id is the path relative to `root`."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--audio_dir {root} is not a directory")
    files = sorted(path for path in root.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file())
    source = f"folder:{root.resolve().name}"
    return [
        TrackRef(path.relative_to(root).as_posix(), source, None, str(path), lambda path=str(path): path)
        for path in files
    ]


def read_fma_metadata(path):
    """{track_id (6 digits): {"genre", "split", "subset", "title", "genre_ids"}} from FMA's tracks.csv, whose
    header is two rows of (group, field) names and a row naming the index. genre_ids: the ids of the track's
    genres (FMA's ("track", "genres"), its top genre and sub-genres; genres.csv names them)."""
    try:
        file = open(path, newline="", encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read FMA metadata {path}: {error.strerror}") from error
    csv.field_size_limit(sys.maxsize)  # track descriptions can be long
    with file:
        rows = csv.reader(file)
        groups, fields = next(rows, []), next(rows, [])
        next(rows, None)
        header = zip(groups, fields, strict=False)
        columns = {(group, field): position for position, (group, field) in enumerate(header)}
        wanted = {"genre": ("track", "genre_top"), "split": ("set", "split"), "subset": ("set", "subset"),
                  "title": ("track", "title"), "genre_ids": ("track", "genres")}
        if ("track", "genre_top") not in columns:
            raise ValueError(f"{path} does not look like FMA's tracks.csv (no ('track', 'genre_top') column)")
        metadata = {}
        for row in rows:
            if row and row[0].isdigit():
                values = {key: row[columns[column]] if column in columns else "" for key, column in wanted.items()}
                values["genre_ids"] = re.findall(r"\d+", values["genre_ids"])  # written as a list: "[21, 811]"
                metadata[f"{int(row[0]):06d}"] = {key: value or None for key, value in values.items()}
        return metadata


def read_fma_genre_names(path):
    """{genre id: name} from FMA's genres.csv (genre_id, #tracks, parent, title, top_level); {} when absent."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            return {row["genre_id"]: row["title"] for row in csv.DictReader(file) if row.get("genre_id")}
    except OSError:
        return {}
    except KeyError as error:
        raise ValueError(f"{path} does not look like FMA's genres.csv (no {error} column)") from None


def fma_description(info, genre_names):
    """A description of an FMA track from its metadata: top genre, sub-genres and title. These are the uploader's
    tags, not a caption of the audio: they say what the music was filed under, not what it sounds like."""
    genre = info.get("genre")
    sub_genres = [genre_names[i] for i in info.get("genre_ids") or [] if i in genre_names and genre_names[i] != genre]
    title = " ".join((info.get("title") or "").split())
    parts = [f"{genre} music" if genre else "music"]
    if sub_genres:
        parts.append(f"({', '.join(dict.fromkeys(sub_genres))})")
    if title:
        parts.append(f'titled "{title}"')
    return " ".join(parts) if genre or sub_genres or title else None


def fma_tracks(fma_dir, metadata_path=None, subset=None):
    """(tracks, counts) for an FMA archive folder (NNN/NNNNNN.mp3; other audio extensions too).

    With metadata, tracks of the archive's subset that are absent on disk are listed too
    (they are rejected as "missing"), and files absent from the metadata are kept with no
    genre or description; `counts` says how many of each. The description comes from the metadata (see
    fma_description), with genre names from genres.csv beside tracks.csv."""
    fma_dir = Path(fma_dir)
    if not fma_dir.is_dir():
        raise ValueError(f"--fma_dir {fma_dir} is not a directory")
    metadata_path = metadata_path or default_fma_metadata(fma_dir)
    metadata = read_fma_metadata(metadata_path) if metadata_path else {}
    genre_names = read_fma_genre_names(Path(metadata_path).with_name("genres.csv")) if metadata_path else {}
    on_disk = {path.stem: path for path in sorted(fma_dir.rglob("*")) if path.suffix.lower() in AUDIO_EXTENSIONS}
    expected = set()
    if metadata:
        subset = subset or fma_dir.name.removeprefix("fma_")
        if subset not in FMA_SUBSETS:
            raise ValueError(f"cannot tell which FMA subset {fma_dir} holds; pass --fma_subset small|medium|large|full")
        expected = {track_id for track_id, info in metadata.items() if info["subset"] in FMA_SUBSETS[subset]}
    source = f"fma:{fma_dir.name}"
    tracks = []
    for track_id in sorted(expected | set(on_disk)):
        path = on_disk.get(track_id, fma_dir / track_id[:3] / f"{track_id}.mp3")
        info = metadata.get(track_id, {})
        text = fma_description(info, genre_names) if info else None
        tracks.append(TrackRef(track_id, source, info.get("genre"), str(path), lambda p=str(path): p, text))
    counts = {
        "files": len(on_disk),
        "in_metadata": len(set(on_disk) & set(metadata)),
        "not_in_metadata": len(set(on_disk) - set(metadata)) if metadata else 0,
        "listed_but_missing": len(expected - set(on_disk)),
    }
    return tracks, counts


def default_fma_metadata(fma_dir):
    """FMA ships fma_metadata/ next to the audio archives."""
    candidate = fma_dir.parent / "fma_metadata" / "tracks.csv"
    return str(candidate) if candidate.is_file() else None


def hf_tracks(
    name, config=None, split="train", audio_column="audio", id_column=None, genre_column=None, streaming=False,
    text_column=None,
):
    """Tracks of a Hugging Face dataset (Hub id, save_to_disk folder, or parquet/arrow files).

    The audio column is read undecoded (bytes or path) so torchcodec is never needed. Ids come
    from `id_column`, else the row number; descriptions from `text_column` (a caption, or a list of
    tags joined with commas). Returns a list, or an iterator when streaming."""
    from datasets import Audio, ClassLabel

    dataset = _load_hf_dataset(name, config, split, streaming)
    features = dataset.features or {}
    if audio_column not in features:
        raise ValueError(f"{name} has no column {audio_column!r} (columns: {sorted(features)}); set --audio_column")
    for column in (id_column, genre_column, text_column):
        if column and column not in features:
            raise ValueError(f"{name} has no column {column!r} (columns: {sorted(features)})")
    if isinstance(features[audio_column], Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    genre_is_label = genre_column and isinstance(features[genre_column], ClassLabel)
    genre_names = features[genre_column].names if genre_is_label else None
    source = f"hf:{name}"

    def make_ref(index, row, fetch):
        track_id = str(row[id_column]) if id_column else f"{index:08d}"
        genre = row[genre_column] if genre_column else None
        genre = genre_names[genre] if genre_names and genre is not None else genre
        location = _audio_location(row.get(audio_column)) or f"{name}[{split}][{index}]"
        text = description_value(row[text_column]) if text_column else None
        return TrackRef(track_id, source, None if genre is None else str(genre), location, fetch, text)

    if streaming:
        return (make_ref(i, row, lambda row=row: _audio_payload(row[audio_column])) for i, row in enumerate(dataset))
    light_columns = list(dict.fromkeys(column for column in (id_column, genre_column, text_column) if column))
    light = dataset.select_columns(light_columns) if light_columns else [{}] * len(dataset)
    audio = dataset.select_columns([audio_column])
    refs = [make_ref(i, row, lambda i=i: _audio_payload(audio[i][audio_column])) for i, row in enumerate(light)]
    return sorted(refs, key=lambda ref: ref.track_id)


def description_value(value):
    """A dataset cell as a description: a string with its whitespace collapsed, a list of tags joined with commas;
    None for an empty one."""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(item) for item in value if item is not None and str(item).strip())
    text = " ".join(str(value).split()) if value is not None else ""
    return text or None


def _load_hf_dataset(name, config, split, streaming):
    import datasets

    path = Path(name)
    try:
        if path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            return loaded.to_iterable_dataset() if streaming else loaded
        if path.exists():
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for builder in ("parquet", "arrow"):
                matching = [str(file) for file in files if file.suffix == f".{builder}"]
                if matching:
                    return datasets.load_dataset(builder, data_files=matching, split="train", streaming=streaming)
            raise ValueError(f"{name}: no save_to_disk dataset, .parquet or .arrow files there")
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError, KeyError) as error:
        raise ValueError(f"cannot open Hugging Face dataset {name!r} (split {split!r}): {error}") from error


def _audio_payload(value):
    """Encoded bytes or a path from an undecoded Audio value (or a plain bytes/path column)."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path") or b""
    return value if isinstance(value, (bytes, str)) else b""


def _audio_location(value):
    return value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
