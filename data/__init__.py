"""Audio collections -> DAC 44.1 kHz codes as Hugging Face datasets (see data.build_dataset).

The names below are imported on first use, so `python -m data.build_dataset --help` does not pay for torch,
transformers and datasets."""

_EXPORTS = {
    "Codec": "processing_music_hybrid",
    "CodecUnavailableError": "processing_music_hybrid",
    "load_codec": "processing_music_hybrid",
    "random_codec_identity": "processing_music_hybrid",
    "CODES_FEATURES": "data.dataset_io",
    "load_codes_dataset": "data.dataset_io",
    "save_codes_dataset": "data.dataset_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
