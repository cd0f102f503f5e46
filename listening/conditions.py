"""The condition controls of the page, built from what the checkpoints' configs have.

One entry per kind of condition a checkpoint can take: today the genre (a menu of the config's genre names).
Text conditioning adds its entry here (a description box, shown for checkpoints whose config names a text
encoder) and its keyword to the generation request; the page lays out whatever this list offers, and classifier-free
guidance applies to any of them.
"""

from dataclasses import dataclass

NO_CONDITION = "(none)"


@dataclass(frozen=True)
class ConditionKind:
    keyword: str  # the generation request's keyword (generate()'s, plan_generation's)
    label: str

    def values(self, config):
        """The values `config` offers, None when the checkpoint does not take this condition."""
        return getattr(config, self.keyword + "s", None)

    def offered(self, checkpoints) -> list:
        """Every value any of the checkpoints offers, in their order."""
        seen = []
        for checkpoint in checkpoints:
            seen += [value for value in self.values(checkpoint.config) or [] if value not in seen]
        return seen

    def control(self, checkpoints, gradio):
        """The page's input for this condition (hidden when no checkpoint takes it)."""
        values = self.offered(checkpoints)
        return gradio.Dropdown([NO_CONDITION, *values], value=NO_CONDITION, label=self.label, visible=bool(values))

    def update_for(self, checkpoint, gradio):
        """The control shown for one checkpoint (the single-model tab's choice)."""
        values = self.values(checkpoint.config) or []
        return gradio.update(choices=[NO_CONDITION, *values], value=NO_CONDITION, visible=bool(values))

    @staticmethod
    def request_value(value):
        return None if value in (None, "", NO_CONDITION) else value


GENRE = ConditionKind("genre", "Genre")
CONDITION_KINDS = (GENRE,)


def any_conditional(checkpoints) -> bool:
    return any(kind.offered(checkpoints) for kind in CONDITION_KINDS)
