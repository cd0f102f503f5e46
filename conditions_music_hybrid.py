"""Conditions as providers, and classifier-free guidance over any of them.

A provider owns one condition: the arguments that forward() takes (`arguments`, e.g. genre_ids; `argument` is the
main one, its key in `CONDITIONS`) and the one that generate() takes (`generate_argument`, e.g. genre), their
validation, the null value ("no condition"), and what it hands the layers: `layer_input`, a vector added at every
position (the genre), or `cross_attention_input`, states that a cross-attention sublayer of every decoder layer
reads (the text's encoded description). A provider's checked values are forward() keyword arguments, so that
generate() hands the same dict to forward() and to the decoding steps. Training's condition dropout gives an
example the provider's null value instead of its own (training/crops.py draws which, from its own generator, so
that a resumed run draws the same). `ClassifierFreeGuidance` runs any providers' rows twice, with their values and
with the null values, and mixes the logits; nothing in it knows what a condition is. Registered providers are
listed in `CONDITIONS`; the backbone builds those its config asks for (`condition_providers`).
modeling_music_hybrid.py and generation_music_hybrid.py import this file; shipped with every checkpoint.
"""

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForTextEncoding, AutoTokenizer
from transformers import initialization as init

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .configuration_music_hybrid import read_text_encoder_config
except ImportError:  # from the repository root they are plain modules
    from configuration_music_hybrid import read_text_encoder_config


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
    arguments = (argument,)
    generate_argument = "genre"
    config_field = "genres"  # the config field that asks for it
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
        return {self.argument: torch.full((batch,), self.null_value, dtype=torch.long, device=device)}

    def checked(self, batch, device, genre_ids=None):
        """{"genre_ids": (B,) int64 genre ids in [0, len(genres)]}; None: the null genre for every row."""
        if genre_ids is None:
            return self.null_values(batch, device)
        if not torch.is_tensor(genre_ids) or genre_ids.shape != (batch,) or genre_ids.is_floating_point():
            shape = tuple(genre_ids.shape) if torch.is_tensor(genre_ids) else type(genre_ids).__name__
            raise ValueError(f"genre_ids must be integers of shape ({batch},), one per row, got {shape}")
        if not is_exporting() and genre_ids.numel():
            if not bool(((genre_ids >= 0) & (genre_ids <= self.null_value)).all()):
                raise ValueError(f"genre_ids must lie in [0, {self.null_value}] ({self.null_value}: the null genre)")
        return {self.argument: genre_ids.to(device=device, dtype=torch.long)}

    def values_for_generation(self, genre, rows, num_prompts, device):
        """generate()'s genre (None, a name for every row, or a list with one per prompt or one per row; None
        entries: no genre) -> {"genre_ids": (rows,) ids}, and whether any row asks for a genre."""
        names = values_per_row(genre, rows, num_prompts, self.generate_argument, "name")
        ids = [self.null_value if name is None else self.genre_id(name) for name in names]
        return {self.argument: torch.tensor(ids, device=device)}, any(name is not None for name in names)

    def genre_id(self, name):
        if name not in self.names:
            raise ValueError(f"unknown genre {name!r}; this model knows {self.names}")
        return self.names.index(name)

    def layer_input(self, genre_ids):
        """(B,) ids -> (B, 1, hidden): added to the embeddings at every position."""
        return self(genre_ids)[:, None]


# The description that means "no description": the text condition's null value, what None and dropped examples get.
NULL_DESCRIPTION = ""
# A checkpoint folder's subfolder holding the text condition's tokenizer files.
TEXT_TOKENIZER_FOLDER = "text_tokenizer"


class TextCondition(nn.Module):
    """A description of the music (`config.text_encoder`), MusicGen's recipe: a pretrained text encoder (T5 by
    default; any encoder `AutoModelForTextEncoding` builds) encodes it once, its last hidden states are projected
    to hidden_size, and a cross-attention sublayer in every decoder layer reads them at every position. Every layer
    kind reads it the same way without a state of its own; in decoding, each layer's keys and values of the
    description are computed at the first input and kept in the cache. The null value is the empty description,
    tokenized and encoded like any other. The encoder is frozen unless `config.train_text_encoder`: its weights
    take no gradients, and it runs in eval mode (no dropout) under no_grad, also while the model trains.

    A new model takes the encoder's pretrained weights and tokenizer from `config.text_encoder`; a checkpoint
    carries both (the weights with the model's, the tokenizer in its `text_tokenizer` folder), so loading one never
    reads `config.text_encoder` again."""

    argument = "text_input_ids"
    arguments = (argument, "text_attention_mask", "text_hidden_states")
    generate_argument = "text"
    config_field = "text_encoder"
    module_name = "text_condition"
    outside_decoding_steps = True  # runs once per generation: decoding-time fast paths leave it as it is

    def __init__(self, config):
        super().__init__()
        self.config = config
        # in the dtype the model is built in (from_pretrained(dtype=...)), not the one its saved config names
        self.encoder = AutoModelForTextEncoding.from_config(
            text_encoder_config(config), dtype=torch.get_default_dtype()
        )
        # transformers gathers what loading must know of a model's parts from its direct children only: passed on
        # from the encoder are its tied weights (T5's input embeddings, tied again after loading), the modules it
        # keeps in float32 (T5's feed-forward output, which overflows float16) and its blocks that device maps
        # must not split
        self.all_tied_weights_keys = {
            f"encoder.{tied}": f"encoder.{source}" for tied, source in self.encoder.all_tied_weights_keys.items()
        }
        for name in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict", "_no_split_modules"):
            setattr(self, name, set(getattr(self.encoder, name) or ()))
        self.projection = nn.Linear(self.encoder.config.hidden_size, config.hidden_size)
        self._tokenizer = None

    @staticmethod
    def wanted_by(config):
        return config.text_encoder is not None

    def init_encoder(self):
        """The encoder of a new or loaded model (the backbone's initialisation calls this): frozen unless
        `config.train_text_encoder` (loading makes new parameters, which take gradients), with the pretrained
        weights in a new model. Loading a checkpoint brings its own: transformers marks the tensors it loaded,
        which `init.copy_` leaves alone, so the pretrained encoder is read only where one is missing."""
        self.encoder.requires_grad_(self.config.train_text_encoder)
        tensors = self.encoder.state_dict(keep_vars=True)
        if all(getattr(tensor, "_is_hf_initialized", False) for tensor in tensors.values()):
            return
        pretrained = load_pretrained_text_encoder(self.config.text_encoder).state_dict()
        for name, tensor in tensors.items():
            init.copy_(tensor, pretrained[name])

    def train(self, mode=True):
        super().train(mode)
        if not self.config.train_text_encoder:
            self.encoder.eval()
        return self

    @property
    def tokenizer(self):
        """The encoder's tokenizer, loaded on first use (see `load_text_tokenizer`)."""
        if self._tokenizer is None:
            self._tokenizer = load_text_tokenizer(self.config)
        return self._tokenizer

    def tokenize(self, descriptions, device=None):
        return tokenize_descriptions(self.tokenizer, descriptions, self.config.max_text_length, device)

    def save_files(self, folder):
        """What a checkpoint needs besides the weights: the tokenizer files."""
        self.tokenizer.save_pretrained(Path(folder) / TEXT_TOKENIZER_FOLDER)

    def encode(self, text_input_ids, text_attention_mask):
        with torch.set_grad_enabled(self.config.train_text_encoder and torch.is_grad_enabled()):
            return self.encoder(input_ids=text_input_ids, attention_mask=text_attention_mask).last_hidden_state

    def null_values(self, batch, device):
        return self.checked(batch, device, **self.tokenize([NULL_DESCRIPTION] * batch, device))

    def checked(self, batch, device, text_input_ids=None, text_attention_mask=None, text_hidden_states=None):
        """{"text_hidden_states": (B, S, encoder hidden), "text_attention_mask": (B, S) int64}: the encoded
        description of every row, from token ids (B, S) or the encoder's hidden states, with an optional mask
        (1: token, 0: padding; None: every token). Nothing given: the null description for every row."""
        if text_input_ids is not None and text_hidden_states is not None:
            raise ValueError("pass text_input_ids or text_hidden_states (the encoder's output), not both")
        if text_input_ids is None and text_hidden_states is None:
            if text_attention_mask is not None:
                raise ValueError("text_attention_mask needs text_input_ids or text_hidden_states")
            return self.null_values(batch, device)
        if text_input_ids is not None:
            check_text_tensor(text_input_ids, "text_input_ids", (batch, None), floating=False)
            length = text_input_ids.shape[1]
        else:
            width = self.encoder.config.hidden_size
            check_text_tensor(text_hidden_states, "text_hidden_states", (batch, None, width), floating=True)
            length = text_hidden_states.shape[1]
        if text_attention_mask is None:
            text_attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        check_text_tensor(text_attention_mask, "text_attention_mask", (batch, length), floating=False)
        text_attention_mask = text_attention_mask.to(device=device, dtype=torch.long)
        if not is_exporting() and not bool((text_attention_mask.sum(dim=1) > 0).all()):
            raise ValueError("text_attention_mask leaves a row without tokens: the null description is still a token")
        if text_hidden_states is None:
            text_hidden_states = self.encode(text_input_ids.to(device), text_attention_mask)
        return {"text_hidden_states": text_hidden_states.to(device), "text_attention_mask": text_attention_mask}

    def values_for_generation(self, text, rows, num_prompts, device):
        """generate()'s text (None, a description for every row, or a list with one per prompt or one per row;
        None or "" entries: no description) -> the encoded descriptions of the rows (encoded once), and whether any
        row has one."""
        descriptions = values_per_row(text, rows, num_prompts, self.generate_argument, "description")
        wrong = [type(entry).__name__ for entry in descriptions if entry is not None and not isinstance(entry, str)]
        if wrong:
            raise ValueError(f"text takes descriptions (str, or None for none), got {wrong[0]}")
        encoded = self.checked(rows, device, **self.tokenize(descriptions, device))
        return encoded, any(description not in (None, NULL_DESCRIPTION) for description in descriptions)

    def cross_attention_input(self, text_hidden_states, text_attention_mask):
        """(B, S, hidden) states that every layer's cross-attention reads, and the additive (B, 1, 1, S) mask of
        their padding."""
        states = self.projection(text_hidden_states.to(self.projection.weight.dtype))
        padding = (text_attention_mask == 0)[:, None, None, :]
        mask = torch.zeros(padding.shape, dtype=states.dtype, device=states.device)
        return states, mask.masked_fill(padding, torch.finfo(states.dtype).min)


def text_encoder_config(config):
    """The text encoder's transformers config, rebuilt from `config.text_encoder_config` (a dict), which is read
    from `config.text_encoder` where a text condition was set on a config after it was made (from_pretrained(path,
    text_encoder=...) on a checkpoint without text)."""
    if config.text_encoder_config is None:
        config.text_encoder_config = read_text_encoder_config(config.text_encoder)
    fields = dict(config.text_encoder_config)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def load_pretrained_text_encoder(name_or_path):
    try:
        return AutoModelForTextEncoding.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"a new text-conditioned model takes its encoder's weights from config.text_encoder={name_or_path!r}, "
            f"which cannot be loaded ({error}): name a Hub encoder or a folder holding one, or load a checkpoint "
            "(from_pretrained), which carries its own"
        ) from error


def load_text_tokenizer(config):
    """A checkpoint's tokenizer (its `text_tokenizer` folder, where the model was loaded from one), else the one of
    `config.text_encoder`."""
    if config.name_or_path:
        try:
            return AutoTokenizer.from_pretrained(config.name_or_path, subfolder=TEXT_TOKENIZER_FOLDER)
        except (OSError, ValueError):  # a checkpoint saved without one: a text condition added to it
            pass
    try:
        return AutoTokenizer.from_pretrained(config.text_encoder)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"the text condition's tokenizer cannot be loaded from {config.text_encoder!r} ({error}): set "
            "model.config.text_encoder to a Hub name or a folder holding the encoder's tokenizer files"
        ) from error


def tokenize_descriptions(tokenizer, descriptions, max_length, device=None):
    """Descriptions (str, None for none) -> {"text_input_ids", "text_attention_mask"}, each (B, S) int64, padded
    on the right, truncated to max_length tokens: forward()'s text arguments. None is the null description."""
    texts = [NULL_DESCRIPTION if description is None else description for description in descriptions]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {
        "text_input_ids": tokens["input_ids"].to(device=device, dtype=torch.long),
        "text_attention_mask": tokens["attention_mask"].to(device=device, dtype=torch.long),
    }


def check_text_tensor(tensor, name, shape, floating):
    """A text argument's type and shape (None in `shape`: any length)."""
    matches = torch.is_tensor(tensor) and tensor.dim() == len(shape) and all(
        size is None or size == actual for size, actual in zip(shape, tensor.shape)
    )
    if not matches or tensor.shape[1] == 0 or tensor.is_floating_point() != floating:
        got = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
        kind = "floats" if floating else "integers"
        expected = ", ".join("length" if size is None else str(size) for size in shape)
        raise ValueError(f"{name} must be {kind} of shape ({expected}), got {got}")


def values_per_row(values, rows, num_prompts, argument, item):
    """generate()'s value of a condition argument (None or one value for every row, or a list with one per prompt
    or one per returned row) -> one value per row."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == num_prompts:
        return [value for value in values for _ in range(rows // num_prompts)]
    if len(values) == 1:
        return values * rows
    if len(values) != rows:
        raise ValueError(
            f"{argument} needs one {item}, one per prompt ({num_prompts}) or one per returned row ({rows}); "
            f"got {len(values)}"
        )
    return values


def missing_condition(argument):
    """The end of the error for a condition's argument (of generate() or forward()) given to a model without that
    condition."""
    kind = next(kind for kind in CONDITIONS.values() if argument in (kind.generate_argument, *kind.arguments))
    name = kind.generate_argument
    return (
        f"needs a {name}-conditioned model; this model has no {name} condition (a model made with "
        f"MusicHybridConfig({kind.config_field}=...) has one)"
    )


def reads_cross_attention(config):
    """Whether the config asks for a condition that decoder layers read by cross-attention (the text)."""
    return any(kind.wanted_by(config) and hasattr(kind, "cross_attention_input") for kind in CONDITIONS.values())


# Every condition kind the backbone can build, by the main forward() argument it takes.
CONDITIONS = {GenreCondition.argument: GenreCondition, TextCondition.argument: TextCondition}
ALL_CONDITION_ARGUMENTS = [argument for kind in CONDITIONS.values() for argument in kind.arguments]


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
            conditions = {name: joined_rows(values, null_conditions[name]) for name, values in conditions.items()}
        self.model_conditions = conditions  # forward() arguments for the model rows

    @classmethod
    def for_generation(cls, providers, requested, guidance_scale, num_prompts, rows, device):
        """Check generate()'s condition arguments (`requested`: generate argument -> value, for every registered
        provider kind) and guidance_scale against the model's `providers` (forward argument -> provider); the
        conditions of `rows` rows (num_prompts prompts, each repeated num_return_sequences times)."""
        present = {provider.generate_argument: provider for provider in providers.values()}
        for name, value in requested.items():
            if value is not None and name not in present:
                raise ValueError(f"{name}= {missing_condition(name)}")
        if not providers:
            if guidance_scale is not None:
                raise ValueError("guidance_scale needs a conditioned model; this model is unconditional")
            return cls()
        if guidance_scale is not None and (
            isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))
            or not (math.isfinite(guidance_scale) and guidance_scale >= 1)
        ):
            raise ValueError(f"guidance_scale must be a number >= 1 (1: no guidance), got {guidance_scale!r}")
        conditions, nulls, asked = {}, {}, False
        for name, provider in present.items():
            values, asked_here = provider.values_for_generation(requested.get(name), rows, num_prompts, device)
            conditions.update(values)
            nulls.update(provider.null_values(rows, device))
            asked |= asked_here
        if guidance_scale is not None and not asked:
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


def joined_rows(first, second):
    """Two batches of one condition argument as one: concatenated rows, a sequence (a description's tokens) padded
    with zeros (a padding mask's "no token") to the longer one."""
    if first.dim() > 1 and first.shape[1] != second.shape[1]:
        length = max(first.shape[1], second.shape[1])
        first, second = (
            torch.cat([part, part.new_zeros(part.shape[0], length - part.shape[1], *part.shape[2:])], dim=1)
            for part in (first, second)
        )
    return torch.cat([first, second])
