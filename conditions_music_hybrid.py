"""Conditions as providers, and classifier-free guidance over any of them.

A provider owns one condition: the argument that forward() takes (`argument`, e.g. genre_ids) and the one that
generate() takes (`generate_argument`, e.g. genre), their validation, the null value ("no condition"), and what it
hands the layers (`layer_input`: here a vector added at every position). Training's condition dropout gives an
example the provider's null value instead of its own (training/crops.py draws which, from its own generator, so
that a resumed run draws the same). `ClassifierFreeGuidance` runs any providers' rows twice, with their values
and with the null values, and mixes the logits; nothing in it knows what a condition is. Registered providers
are listed in `CONDITIONS`; the backbone builds those its config asks for (`condition_providers`).
modeling_music_hybrid.py and generation_music_hybrid.py import this file; shipped with every checkpoint.
"""

import math

import torch
from torch import nn
from transformers import initialization as init


# torch.export sets it; torch releases before it existed never export this model (see the export test)
is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


class GenreCondition(nn.Embedding):
    """The genre of a genre-conditioned model (`config.genres`): one embedding row per genre and a last row for
    the null genre ("no genre given"), added to every position next to the code embeddings. Every layer kind sees
    it at every step without a state of its own, so a decoding step equals the full forward pass as it does
    unconditionally, and the positions stay those of the codes. The rows start at zero (without random draws): a
    new conditional model, or one fine-tuned from an unconditional checkpoint, starts as the unconditional model
    with the same seed and learns the genres from there."""

    argument = "genre_ids"
    generate_argument = "genre"
    module_name = "embed_genres"  # the backbone's attribute, which names the weights in checkpoints

    def __init__(self, config):
        rows = len(config.genres) + 1
        super().__init__(rows, config.hidden_size, _weight=torch.zeros(rows, config.hidden_size))
        self.names = list(config.genres)

    @staticmethod
    def wanted_by(config):
        return config.genres is not None

    def init_own_weights(self):
        init.zeros_(self.weight)

    @property
    def null_value(self):
        return len(self.names)

    def null_values(self, batch, device):
        return torch.full((batch,), self.null_value, dtype=torch.long, device=device)

    def checked(self, genre_ids, batch, device):
        """(B,) int64 genre ids in [0, len(genres)]; None: the null genre for every row."""
        if genre_ids is None:
            return self.null_values(batch, device)
        if not torch.is_tensor(genre_ids) or genre_ids.shape != (batch,) or genre_ids.is_floating_point():
            shape = tuple(genre_ids.shape) if torch.is_tensor(genre_ids) else type(genre_ids).__name__
            raise ValueError(f"genre_ids must be integers of shape ({batch},), one per row, got {shape}")
        if not is_exporting() and genre_ids.numel():
            if not bool(((genre_ids >= 0) & (genre_ids <= self.null_value)).all()):
                raise ValueError(f"genre_ids must lie in [0, {self.null_value}] ({self.null_value}: the null genre)")
        return genre_ids.to(device=device, dtype=torch.long)

    def values_for_generation(self, genre, rows, num_prompts, device):
        """generate()'s genre (None, a name for every row, or a list with one per prompt or one per row; None
        entries: no genre) -> (rows,) ids, and whether any row asks for a genre."""
        names = list(genre) if isinstance(genre, (list, tuple)) else [genre]
        if len(names) == num_prompts:
            names = [name for name in names for _ in range(rows // num_prompts)]
        elif len(names) == 1:
            names = names * rows
        elif len(names) != rows:
            raise ValueError(
                f"genre needs one name, one per prompt ({num_prompts}) or one per returned row ({rows}); "
                f"got {len(names)}"
            )
        ids = [self.null_value if name is None else self.genre_id(name) for name in names]
        return torch.tensor(ids, device=device), any(name is not None for name in names)

    def genre_id(self, name):
        if name not in self.names:
            raise ValueError(f"unknown genre {name!r}; this model knows {self.names}")
        return self.names.index(name)

    def layer_input(self, genre_ids):
        """(B,) ids -> (B, 1, hidden): added to the embeddings at every position."""
        return self(genre_ids)[:, None]


# Every condition kind the backbone can build, by the forward() argument it takes.
CONDITIONS = {GenreCondition.argument: GenreCondition}


class ClassifierFreeGuidance:
    """The conditions of a generation's rows and its guidance scale, and how the model runs them.

    Under guidance (g > 1) the model runs every row twice in one batch through one cache, first with its
    conditions, then with every provider's null value; each codebook's logits become null + g * (cond - null)
    before sampling. Otherwise it runs the rows once, with their conditions (or none).
    """

    def __init__(self, conditions=None, guidance_scale=None, null_conditions=None):
        self.guidance_scale = guidance_scale
        self.guided = guidance_scale is not None and guidance_scale != 1
        conditions = conditions or {}
        if self.guided:
            conditions = {name: torch.cat([values, null_conditions[name]]) for name, values in conditions.items()}
        self.model_conditions = conditions  # forward() arguments for the model rows

    @classmethod
    def for_generation(cls, providers, requested, guidance_scale, num_prompts, rows, device):
        """Check generate()'s condition arguments (`requested`: generate argument -> value, for every registered
        provider kind) and guidance_scale against the model's `providers` (forward argument -> provider); the
        conditions of `rows` rows (num_prompts prompts, each repeated num_return_sequences times)."""
        present = {provider.generate_argument: (argument, provider) for argument, provider in providers.items()}
        for name, value in requested.items():
            if value is not None and name not in present:
                raise ValueError(f"{name}= needs a {name}-conditioned model; this model has no {name} condition")
        if not providers:
            if guidance_scale is not None:
                raise ValueError("guidance_scale needs a conditioned model; this model is unconditional")
            return cls()
        conditions, nulls, asked = {}, {}, False
        for name, (argument, provider) in present.items():
            conditions[argument], asked_here = provider.values_for_generation(
                requested.get(name), rows, num_prompts, device
            )
            nulls[argument] = provider.null_values(rows, device)
            asked |= asked_here
        if guidance_scale is not None:
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
                math.isfinite(guidance_scale) and guidance_scale >= 1
            ):
                raise ValueError(f"guidance_scale must be a number >= 1 (1: no guidance), got {guidance_scale!r}")
            if not asked:
                names = " or ".join(f"{name}=" for name in present)
                raise ValueError(f"guidance_scale needs a condition to guide towards: pass {names}")
        return cls(conditions, guidance_scale, nulls)

    def num_model_rows(self, rows):
        return 2 * rows if self.guided else rows

    def model_rows(self, tokens):
        """The model's input for the sampled rows' tokens (contiguous: a compiled step guards on strides)."""
        return torch.cat([tokens, tokens]) if self.guided else tokens.contiguous()

    def guided_logits(self, logits):
        """(model rows, K, V) -> (rows, K, V): null + g * (cond - null) under guidance, the logits otherwise."""
        if not self.guided:
            return logits
        conditional, null = logits.float().chunk(2)
        return null + self.guidance_scale * (conditional - null)
