"""Folders or Hub ids given on a command line, checked before torch is imported: a name that is no folder here is
refused at once when it cannot be a Hub id, when the Hub is off (HF_HUB_OFFLINE) and holds no cached copy, or when
the Hub cannot be reached. The Hub's loaders would hide the real mistake behind their errors about repo-id syntax or
connections, and without a network they retry for about half a minute first."""

import functools
import os

# One look-up without retries; a slow answer is no proof of absence, so only a failed connection refuses the name.
HUB_LOOKUP_TIMEOUT_S = 5.0


def check_local_or_hub(name: str, option: str, kind: str, repo_type: str = "model", marker_file: str = "config.json",
                       fix: str = "check the path") -> None:
    """Refuse `name` (ValueError naming `option`, ending with `fix`) unless it exists here or is a Hub `repo_type`
    that can be loaded: cached (holding `marker_file`), or found by one quick look-up. 'namespace/name' is local
    when the folder 'namespace' exists here. A Hub failure after this check is the caller's to report (`not_found`)."""
    if os.path.exists(name):
        return
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1 or "\\" in name
    if looks_local or os.path.isdir(os.path.dirname(name)):
        raise ValueError(f"{option} {name!r}: no such folder; give the folder of {kind}")
    import huggingface_hub.constants

    offline, cache = huggingface_hub.constants.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_CACHE
    problem = _hub_problem(name, repo_type, marker_file, offline, cache)
    if problem:
        raise ValueError(f"{option} {name!r}: no such folder here, and {problem}; {fix}")


@functools.lru_cache(maxsize=None)  # a command checks a name early and its library code again: one look-up
def _hub_problem(name: str, repo_type: str, marker_file: str, offline: bool, cache: str) -> str | None:
    """Why the Hub cannot give `name` (None: cached, found, or not known to be missing)."""
    import huggingface_hub
    import huggingface_hub.errors

    if isinstance(huggingface_hub.try_to_load_from_cache(name, marker_file, cache_dir=cache, repo_type=repo_type),
                  str):
        return None
    if offline:
        return f"no cached Hub {repo_type} of that name (HF_HUB_OFFLINE is set)"
    try:
        huggingface_hub.HfApi().repo_info(name, repo_type=repo_type, timeout=HUB_LOOKUP_TIMEOUT_S)
    except huggingface_hub.errors.GatedRepoError:
        return None
    except huggingface_hub.errors.RepositoryNotFoundError:
        return f"no Hub {repo_type} of that name"
    except Exception as error:
        if _is_connection_failure(error):
            return f"the Hugging Face Hub cannot be reached to look for it ({_first_line(error)})"
    return None  # anything else: the loader meets it again and reports it in its own words


def _is_connection_failure(error: Exception) -> bool:
    """No connection at all (no network, DNS failure, refused). By class name: the Hub client's HTTP library
    changed between huggingface_hub versions (requests, httpx, httpx2), and each names it so."""
    return any(cls.__name__ in ("ConnectError", "ConnectionError") for cls in type(error).__mro__)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def not_found(name: str, option: str, kind: str, error: Exception) -> ValueError:
    return ValueError(
        f"{option} {name!r}: no such folder, and no {kind} of that name could be loaded from the Hub "
        f"({_first_line(error)}); check the path"
    )


def check_codec_available(model_id: str, option: str, fix: str) -> None:
    """A pretrained DAC (transformers' DacModel) that is neither a folder here nor loadable from the Hub."""
    check_local_or_hub(model_id, option, "a DAC model (transformers' DacModel)", fix=fix)


def check_model(name: str, option: str) -> None:
    check_local_or_hub(name, option, "a model saved by run_clm_audio.py")


def check_codes_dataset(name: str, option: str) -> None:
    check_local_or_hub(name, option, "a codes dataset made by python -m data.build_dataset", repo_type="dataset",
                       marker_file="codec.json")  # data.dataset_io.CODEC_FILE (that module imports datasets)


def load_checkpoint_config(name: str, option: str):
    """The MusicHybridConfig of a saved model folder or Hub id, every failure as one ValueError naming `option`."""
    from configuration_music_hybrid import MusicHybridConfig

    check_model(name, option)
    try:
        return MusicHybridConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        if os.path.isdir(name):
            raise ValueError(f"{option} {name!r} holds no music-hybrid model ({_first_line(error)})") from None
        raise not_found(name, option, "model", error) from None
