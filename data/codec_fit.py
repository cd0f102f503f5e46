"""`data.build_dataset --codec fitted`: fit the offline codec (codec_fitted_music_hybrid.py) on the audio of the
training split, before any track is encoded; the validation tracks never shape the codec that codes them."""

import sys

from tqdm.auto import tqdm

from codec_fitted_music_hybrid import NUM_CODEBOOKS, PARAMETERS_FILE, band_edges, band_features, fitted_identity
from codec_fitted_music_hybrid import save_parameters, timed_fit
from processing_music_hybrid import remember_codec_parameters

from .rejects import RejectedInput


def fit_on_training_split(args, tracks, assign, read, show_progress):
    """(stages, centroids, bands) centroids fitted on the tracks that `assign` puts in the train split, each read
    by `read(track)` (samples, or a RejectedInput that is skipped). Raises ValueError for a streamed source and
    for too little audio (fewer frames than centroids), before the fit."""
    if not isinstance(tracks, list):
        raise ValueError("--codec fitted reads the training split before encoding it: drop --streaming")
    split_of = assign(sorted(track.track_id for track in tracks))
    training = [track for track in tracks if split_of[track.track_id] == "train"]
    edges = band_edges()
    blocks = []
    for track in tqdm(training, desc="fit: read training audio", unit="track", disable=not show_progress):
        samples = read(track)
        if not isinstance(samples, RejectedInput):
            blocks.append(band_features(samples, edges))
    with tqdm(total=NUM_CODEBOOKS, desc="fit: residual k-means", unit="codebook", disable=not show_progress) as bar:
        centroids, seconds = timed_fit(blocks, args.codec_seed, args.codec_centroids, lambda stage: bar.update())
    if show_progress:
        print(f"fitted codec: {sum(len(block) for block in blocks)} frames of {len(blocks)} training tracks, "
              f"{NUM_CODEBOOKS} codebooks x {args.codec_centroids} centroids, seed {args.codec_seed}, "
              f"fitted in {seconds:.1f} s", file=sys.stderr)
    return centroids


def save_fit(folder, centroids, seed):
    """Write the fit into `folder` and return its codec identity."""
    path = folder / PARAMETERS_FILE
    identity = fitted_identity(seed, save_parameters(centroids, path, seed), centroids.shape[1])
    remember_codec_parameters(identity, path)
    return identity
