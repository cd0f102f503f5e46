"""A tiny randomly initialised text encoder, written to a folder: what tests and the demo condition on offline.

A text-conditioned model names its encoder by Hub name or folder (`MusicHybridConfig(text_encoder=...)`). Where
nothing can be downloaded, `save_random_text_encoder` writes a T5 encoder built from a config (random weights from
a seed) with ByT5's tokenizer, which needs no vocabulary file: its ids are the UTF-8 bytes. Distinct descriptions
then map to distinct encoder outputs, which a model can learn to tell apart, but the encoder knows no language:
"calm" and "quiet" are as unrelated to it as any two strings.
"""

from pathlib import Path

import torch
from transformers import ByT5Tokenizer, T5Config, T5EncoderModel


def save_random_text_encoder(folder, seed=0, d_model=32, num_layers=1, num_heads=4, d_ff=64):
    """Write a random T5 encoder (`d_model` wide, `num_layers` deep) and a ByT5 tokenizer to `folder`; returns the
    folder as a str, for `MusicHybridConfig(text_encoder=...)`. The same seed writes the same weights."""
    tokenizer = ByT5Tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = T5EncoderModel(config)
    finally:  # the caller's random stream is left as it was
        torch.random.set_rng_state(generator_state)
    folder = Path(folder)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
