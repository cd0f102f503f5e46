"""The checkpoints a listening page serves: which ones (the --model arguments, or the demo's trained models), their
checks at start-up, their display names, and the loaded models and codecs kept between requests."""

import os
import threading
from dataclasses import dataclass
from pathlib import Path

DEMO_OUTPUT = "demo_output"


@dataclass(frozen=True)
class Checkpoint:
    name: str  # shown on the page: the folder's name or the Hub id
    path: str  # what from_pretrained loads
    config: object  # its MusicHybridConfig
    codec_identity: dict


def checkpoint_paths(models, demo_output=DEMO_OUTPUT) -> list:
    """The --model arguments, or without any the model folders that demo.py wrote; ValueError when there are none."""
    if models:
        return list(models)
    found = sorted(str(path.parent) for path in Path(demo_output).glob("*/config.json"))
    if not found:
        where = f"{demo_output}/ holds no trained model" if Path(demo_output).is_dir() else f"no {demo_output}/ here"
        raise ValueError(
            f"no --model given and {where}: pass --model PATH_OR_HUB_ID (a folder saved by run_clm_audio.py), or run "
            "`python demo.py` first to train small ones"
        )
    return found


def check_checkpoints(paths) -> list:
    """Every checkpoint's config and codec checked (no weights loaded); ValueError naming the first that fails."""
    from cli.paths import check_local_or_hub, load_checkpoint_config

    for path in paths:  # a mistyped folder is refused at once, before transformers is imported
        check_local_or_hub(path, "--model", "a model saved by run_clm_audio.py")
    from generation.pipeline import resolve_codec_identity

    checkpoints = []
    for path in paths:
        config = load_checkpoint_config(path, "--model")
        try:
            identity = resolve_codec_identity(config)
        except ValueError as error:
            raise ValueError(f"--model {path!r}: {error}") from None
        checkpoints.append(Checkpoint(display_name(path), path, config, identity))
    names = [checkpoint.name for checkpoint in checkpoints]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--model: two checkpoints are both named {repeated[0]!r} (folder names must differ)")
    return checkpoints


def display_name(path) -> str:
    """A local folder by its name, a Hub id as it is."""
    return Path(path).resolve().name if os.path.exists(path) else str(path)


class LoadedModels:
    """Models (per checkpoint, int8 or not, compiled or not) and codecs, loaded on first use and kept."""

    def __init__(self, device):
        self.device = device
        self._models = {}
        self._codecs = {}
        self._lock = threading.Lock()

    def model(self, checkpoint, quantize, compile_decoding):
        from generation.pipeline import load_model

        key = (checkpoint.path, quantize, compile_decoding)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(checkpoint.path, self.device, "float32", quantize, compile_decoding)
            return self._models[key]

    def codec(self, checkpoint):
        import json

        from generation.pipeline import load_checkpoint_codec

        key = json.dumps(checkpoint.codec_identity, sort_keys=True)
        with self._lock:
            if key not in self._codecs:
                self._codecs[key] = load_checkpoint_codec(checkpoint.codec_identity, self.device,
                                                          location=checkpoint.path)  # a fitted codec's file
            return self._codecs[key]
