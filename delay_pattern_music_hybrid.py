"""MusicGen's delay pattern: codebook k is shifted right by k frames, so one sequence position carries one token
per codebook; and the model inputs and labels of natural-layout codes. Imported by modeling_music_hybrid.py and
generation_music_hybrid.py; shipped with every checkpoint.
"""

import torch

IGNORE_INDEX = -100


def apply_delay_pattern(codes, pad_token_id):
    """(B, K, T) natural codes -> (B, K, T + K - 1): codebook k shifted right by k frames, delay slots = pad."""
    batch, num_codebooks, num_frames = codes.shape
    delayed = codes.new_full((batch, num_codebooks, num_frames + num_codebooks - 1), pad_token_id)
    for k in range(num_codebooks):
        delayed[:, k, k : k + num_frames] = codes[:, k]
    return delayed


def undo_delay_pattern(delayed):
    """(B, K, T + K - 1) delayed codes -> (B, K, T) natural codes."""
    num_codebooks = delayed.shape[1]
    num_frames = delayed.shape[2] - num_codebooks + 1
    if num_frames < 0:
        raise ValueError(f"A delayed sequence of {num_codebooks} codebooks needs at least {num_codebooks - 1} positions")
    return torch.stack([delayed[:, k, k : k + num_frames] for k in range(num_codebooks)], dim=1)


def codes_to_model_inputs(codes, config):
    """Natural codes (B, K, T) -> model inputs of T + K positions: a start column, then the delayed codes.

    Labels are the inputs with every special id (start, pad) replaced by -100, so that right-padding a short
    track with pad frames masks it out of the loss. The model shifts labels by one position itself.
    """
    start = codes.new_full((codes.shape[0], codes.shape[1], 1), config.bos_token_id)
    input_ids = torch.cat([start, apply_delay_pattern(codes, config.pad_token_id)], dim=2)
    labels = input_ids.masked_fill(input_ids >= config.codebook_size, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}
