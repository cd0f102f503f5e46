"""Training with genres: condition dropout as a function of (seed, sample), the genre list and its null mapping,
refusals, and the offline proof: a tiny conditional model trained by run_clm_audio.py on codes whose distribution
depends on the genre knows the genre (true-genre loss below the null-genre loss) and guidance g = 3 samples
closer to the genre's code distribution than g = 1."""

import json
import types

import numpy as np
import torch
from datasets import Dataset, DatasetDict

import run_clm_audio
from configuration_music_hybrid import MusicHybridConfig
from data.dataset_io import CODES_FEATURES, save_codes_dataset
from modeling_music_hybrid import MusicHybridForCausalLM
from training.conditions import training_conditions
from training.crops import CodesCollator, CodesWindows, ConditionWindows, RandomCropBatchSampler
from training.genres import configure_genres
from training_helpers import make_codes_dataset, random_codec, training_argv

STYLES = ["Ambient", "Chiptune", "Drums", "Lofi"]
SUBSET = 8  # genre g plays only the codes 8g ... 8g + 7, uniformly, in every codebook


def genre_split(num_tracks, frames, seed, prefix, genres=None):
    rng = np.random.default_rng(seed)
    genres = genres or [STYLES[i % len(STYLES)] for i in range(num_tracks)]
    offsets = [SUBSET * STYLES.index(g) if g in STYLES else 0 for g in genres]  # unlabelled tracks play genre 0's
    codes = [(offset + rng.integers(0, SUBSET, (9, frames))).astype(np.int16) for offset in offsets]
    return Dataset.from_dict(
        {
            "codes": codes,
            "track_id": [f"{prefix}{i:03d}" for i in range(num_tracks)],
            "start_frame": [0] * num_tracks,
            "num_frames": [frames] * num_tracks,
            "duration": [frames * 512 / 44100] * num_tracks,
            "genre": genres,
            "source": ["synthetic"] * num_tracks,
            "text": [None] * num_tracks,
        },
        features=CODES_FEATURES,
    )


def take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_condition_dropout_is_a_function_of_seed_and_sample():
    lengths = [60, 80, 100, 70, 90]
    one_batch = [key for batch in take(RandomCropBatchSampler(lengths, 50, 8, 3, condition_dropout=0.3), 250)
                 for key in batch]
    accumulated = [key for batch in take(RandomCropBatchSampler(lengths, 50, 4, 3, condition_dropout=0.3), 500)
                   for key in batch]
    assert one_batch == accumulated
    ranks = [take(RandomCropBatchSampler(lengths, 50, 4, 3, 2, rank, condition_dropout=0.3), 250) for rank in (0, 1)]
    assert [key for pair in zip(*ranks, strict=True) for batch in pair for key in batch] == one_batch
    resumed = take(RandomCropBatchSampler(lengths, 50, 8, 3, start_batch=100, condition_dropout=0.3), 5)
    assert [key for batch in resumed for key in batch] == one_batch[800:840]
    dropped = np.mean([key[2] for key in one_batch])
    assert abs(dropped - 0.3) < 0.03  # 2000 independent draws: 5 standard errors
    other_seed = [key for batch in take(RandomCropBatchSampler(lengths, 50, 8, 4, condition_dropout=0.3), 250)
                  for key in batch]
    assert [key[2] for key in other_seed] != [key[2] for key in one_batch]
    # The crops themselves do not depend on the dropout: unconditional keys are the first two entries.
    plain = [key for batch in take(RandomCropBatchSampler(lengths, 50, 8, 3), 250) for key in batch]
    assert plain == [key[:2] for key in one_batch]


def test_genre_windows_give_each_row_its_genre_id_or_the_null_genre():
    config = MusicHybridConfig.from_preset("transformer-tiny", genres=["Ambient", "Drums"])
    split = genre_split(4, 20, 0, "t", genres=["Drums", "Ambient", "Lofi", "Drums"])
    split = split.map(lambda row, i: {"genre": None if i == 3 else row["genre"]}, with_indices=True)
    (genre,) = training_conditions(split, types.SimpleNamespace(config=config))
    assert genre.row_values == [1, 0, 2, 2]  # Lofi is unknown, the last row has none: the null genre (2)
    assert genre.known_rows() == [True, True, False, False]
    windows = ConditionWindows(CodesWindows(split, 11, config.pad_token_id), [genre])
    batch = CodesCollator(config, [genre])([windows[(0, 0, False)], windows[(0, 0, True)], windows[(1, 3)]])
    assert batch["conditions"]["genre"]["genre_ids"].tolist() == [1, 2, 0]
    assert batch["input_ids"].shape == (3, 9, 20)


def arguments(genre_conditioning=False, condition_dropout=None):
    return types.SimpleNamespace(genre_conditioning=genre_conditioning, condition_dropout=condition_dropout)


def test_genre_list_comes_from_the_training_split_and_unknown_genres_are_counted():
    splits = {
        "train": genre_split(6, 20, 0, "t", genres=["Lofi", "Drums", None, "Lofi", "Ambient", ""]),
        "validation": genre_split(3, 20, 1, "v", genres=["Chiptune", "Drums", None]),
    }
    config = MusicHybridConfig.from_preset("transformer-tiny")
    lines = configure_genres(config, arguments(True), splits, "train")
    assert config.genres == ["Ambient", "Drums", "Lofi"] and config.condition_dropout == 0.1
    assert "3 genres from the 'train' split (Ambient, Drums, Lofi), condition dropout 0.1" in lines[0]
    assert lines[1] == "  'train' split: 2 rows without a genre use the null genre"
    assert lines[2] == ("  'validation' split: 1 genre(s) the model does not know (Chiptune; 1 rows) and 1 rows "
                        "without a genre use the null genre")
    # Continuing from a conditional model keeps its list and dropout, whatever the dataset holds.
    continued = MusicHybridConfig.from_preset("transformer-tiny")
    saved = MusicHybridConfig.from_preset("transformer-tiny", genres=["Drums", "Jazz"], condition_dropout=0.2)
    lines = configure_genres(continued, arguments(True), splits, "train", checkpoint_config=saved)
    assert continued.genres == ["Drums", "Jazz"] and continued.condition_dropout == 0.2
    assert "2 genre(s) the model does not know (Ambient, Lofi; 3 rows)" in lines[1]
    configure_genres(continued, arguments(condition_dropout=0.3), splits, "train", checkpoint_config=saved)
    assert continued.condition_dropout == 0.3
    unconditional = MusicHybridConfig.from_preset("transformer-tiny")
    assert configure_genres(unconditional, arguments(), splits, "train") == [] and unconditional.genres is None


def error_of(argv, capsys):
    assert run_clm_audio.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_genre_options_refuse_what_they_cannot_do(tmp_path, capsys):
    unlabelled = make_codes_dataset(tmp_path / "unlabelled")
    no_genres = DatasetDict(
        train=genre_split(4, 60, 0, "t", [None] * 4), validation=genre_split(2, 60, 1, "v", [None] * 2)
    )
    save_codes_dataset(no_genres, str(tmp_path / "no-genres"), random_codec())
    capsys.readouterr()
    message = error_of(training_argv(str(tmp_path / "no-genres"), tmp_path / "a", genre_conditioning=True), capsys)
    assert "--genre_conditioning needs genre labels" in message
    message = error_of(training_argv(unlabelled, tmp_path / "b", condition_dropout=0.2), capsys)
    assert "--condition_dropout needs a conditioned model: pass --genre_conditioning or --text_conditioning" in message
    message = error_of(training_argv(unlabelled, tmp_path / "c", genre_conditioning=True, condition_dropout=1.5),
                       capsys)
    assert "condition_dropout: must be in [0, 1)" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    # A run that stopped unconditional cannot be resumed as a conditional one.
    assert run_clm_audio.main(training_argv(unlabelled, tmp_path / "run", max_steps=2, save_steps=2)) == 0
    capsys.readouterr()
    message = error_of(
        training_argv(unlabelled, tmp_path / "run", max_steps=4, resume_from_checkpoint="latest",
                      genre_conditioning=True), capsys
    )
    assert "was trained without genre conditioning" in message


def kl_to_genre(codes, genre_index):
    """Mean over codebooks of KL(genre's code distribution || histogram of the codes), the histogram over the
    32 codes that any genre uses (add-half smoothing; codes outside them count only through the total)."""
    target = np.zeros(32)
    target[SUBSET * genre_index : SUBSET * (genre_index + 1)] = 1 / SUBSET
    divergences = []
    for k in range(codes.shape[1]):
        counts = np.bincount(codes[:, k].flatten().numpy(), minlength=1024).astype(float)
        histogram = (counts[:32] + 0.5) / (counts.sum() + 0.5 * 32)
        inside = target > 0
        divergences.append(float(np.sum(target[inside] * np.log(target[inside] / histogram[inside]))))
    return float(np.mean(divergences))


def test_tiny_conditional_model_learns_the_genre_and_guidance_moves_samples_towards_it(tmp_path, capsys):
    """Codes of genre g are uniform over its own 8 codes: with the true genre the first codes of a segment cost
    log 8 instead of the log 32 of an unknown genre, later ones less once the context shows the genre. Training
    (100 steps of 8 crops of 7 frames, hybrid-tiny) takes about 15 s of one CPU core."""
    dataset = tmp_path / "genres"
    splits = DatasetDict(train=genre_split(64, 40, 0, "t"), validation=genre_split(16, 40, 1, "v"))
    save_codes_dataset(splits, str(dataset), random_codec())
    output_dir = tmp_path / "run"
    argv = training_argv(str(dataset), output_dir, do_eval=True, genre_conditioning=True, condition_dropout=0.1,
                         max_steps=100, segment_length=16, per_device_train_batch_size=8, logging_steps=50)
    assert run_clm_audio.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Genre conditioning: 4 genres from the 'train' split (Ambient, Chiptune, Drums, Lofi)" in printed
    assert "| codebook | loss, true genre | loss, null genre | genre information (nats) | 95% interval |" in printed

    information = json.loads((output_dir / "eval_results.json").read_text())["genre_information"]
    assert information["num_segments"] == 16 * 6  # 40 frames in windows of 7, the last one shorter
    # Margin: at least 0.01 nats per token on average (measured: 0.023), its interval above zero, every codebook.
    assert information["mean_information"] > 0.01 and information["mean_information_ci"][0] > 0
    assert min(information["codebook_information"]) > 0
    card = (output_dir / "README.md").read_text()  # the model card: the genres and the genre-information table
    assert "Conditioned on 4 genres (trained with condition dropout 0.1): Ambient, Chiptune, Drums, Lofi" in card
    assert "genre information (nats)" in card

    model = MusicHybridForCausalLM.from_pretrained(output_dir).eval()
    assert model.config.genres == STYLES and model.config.condition_dropout == 0.1
    divergences, outside = {}, {}
    for scale in (1.0, 3.0):
        torch.manual_seed(0)
        samples = [model.generate(max_new_tokens=7, num_return_sequences=64, genre=genre, guidance_scale=scale,
                                  top_k=0) for genre in STYLES]
        divergences[scale] = np.mean([kl_to_genre(codes, index) for index, codes in enumerate(samples)])
        outside[scale] = np.mean([((codes // SUBSET) != index).float().mean() for index, codes in enumerate(samples)])
    # Margin: guidance removes at least a tenth of the divergence (measured: 0.334 -> 0.274 nats) and of the share
    # of codes from other genres (measured: 24% -> 20%).
    assert divergences[3.0] < 0.9 * divergences[1.0], divergences
    assert outside[3.0] < 0.9 * outside[1.0], outside
