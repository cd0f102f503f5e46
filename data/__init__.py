"""Audio collections -> DAC 44.1 kHz codes as Hugging Face datasets (see data.build_dataset)."""

from processing_music_hybrid import (
    Codec,
    CodecUnavailableError,
    load_codec,
    random_codec_identity,
)

from .dataset_io import CODES_FEATURES, load_codes_dataset, save_codes_dataset

__all__ = [
    "CODES_FEATURES",
    "Codec",
    "CodecUnavailableError",
    "load_codec",
    "load_codes_dataset",
    "random_codec_identity",
    "save_codes_dataset",
]
