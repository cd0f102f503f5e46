"""The condition controls of the page, built from what the checkpoints' configs ask for.

The model's condition providers (`conditions_music_hybrid.CONDITIONS`) say which conditions a config takes
(`wanted_by`) and the generate() argument of each (`generate_argument`); this file says how the page asks for
each one: the genre as a menu of the config's genre names. Text conditioning adds its provider there and a
description box here (`PAGE_CONTROLS["description"] = ...`); the page lays out what this list offers, and
classifier-free guidance applies to any of them.
"""

from dataclasses import dataclass

from conditions_music_hybrid import CONDITIONS

NO_CONDITION = "(none)"


@dataclass(frozen=True)
class MenuControl:
    """A condition picked from names that the config lists (config.<names_field>)."""

    label: str
    names_field: str

    def component(self, configs, gradio):
        names = []
        for config in configs:
            names += [name for name in getattr(config, self.names_field) or [] if name not in names]
        return gradio.Dropdown([NO_CONDITION, *names], value=NO_CONDITION, label=self.label)

    def update_for(self, config, gradio):
        """The control for one checkpoint (the Generate tab's choice): its own names, hidden when it has none."""
        names = getattr(config, self.names_field) or []
        return gradio.update(choices=[NO_CONDITION, *names], value=NO_CONDITION, visible=bool(names))

    @staticmethod
    def request_value(value):
        return None if value in (None, "", NO_CONDITION) else value


# The page's control for each generate() condition argument.
PAGE_CONTROLS = {"genre": MenuControl("Genre", "genres")}


def condition_arguments(configs) -> list:
    """The generate() arguments of the conditions that any of the configs takes and the page can ask for."""
    wanted = [provider.generate_argument for provider in CONDITIONS.values()
              if any(provider.wanted_by(config) for config in configs)]
    return [argument for argument in wanted if argument in PAGE_CONTROLS]
