"""Folders or Hub ids given on a command line: a local path that does not exist is refused as such, before the Hub
is asked (its errors about repo-id syntax or connections would hide the real mistake)."""

import os


def check_local_or_hub(name: str, option: str, kind: str) -> None:
    """Refuse `name` unless it exists here or could be a Hub id. 'namespace/name' is local when the folder
    'namespace' exists here; otherwise the caller asks the Hub and, if that fails too, raises `not_found`."""
    looks_local = os.path.isabs(name) or name.startswith(".") or name.count("/") != 1
    if not os.path.exists(name) and (looks_local or os.path.isdir(os.path.dirname(name))):
        raise ValueError(f"{option} {name!r}: no such folder; give the folder of {kind}")


def not_found(name: str, option: str, kind: str, error: Exception) -> ValueError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(
        f"{option} {name!r}: no such folder, and no {kind} of that name could be loaded from the Hub ({reason}); "
        "check the path"
    )


def load_checkpoint_config(name: str, option: str):
    """The MusicHybridConfig of a saved model folder or Hub id, every failure as one ValueError naming `option`."""
    from configuration_music_hybrid import MusicHybridConfig

    check_local_or_hub(name, option, "a model saved by run_clm_audio.py")
    try:
        return MusicHybridConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        if os.path.isdir(name):
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{option} {name!r} holds no music-hybrid model ({reason})") from None
        raise not_found(name, option, "model", error) from None
