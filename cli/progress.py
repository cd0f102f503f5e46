"""The libraries' own progress bars inside a command's output."""


def hide_transformers_bars() -> None:
    """transformers' bars ("Loading weights", "Writing model shards") flash by between a command's own lines and
    say nothing its progress does not; the Hub's download bars stay (a first download of DAC takes minutes), unless
    the user turned them off (HF_HUB_DISABLE_PROGRESS_BARS). transformers has one switch for both, so the Hub's is
    set back."""
    import huggingface_hub.utils
    import transformers

    hub_bars_on = not huggingface_hub.utils.are_progress_bars_disabled()
    transformers.utils.logging.disable_progress_bar()
    if hub_bars_on:
        huggingface_hub.utils.enable_progress_bars()
