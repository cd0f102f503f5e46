"""A language model over delayed DAC codes: a Transformer or a Jamba-style hybrid, built from registered parts.

Read top-down: the registry of sequence mixers, the model outputs, the backbone (embeddings, conditions,
positions, decoder layers, final norm), the causal LM (one head per codebook, the loss, the codec), then the parts
that live here: the decoder layer, the attention mixer, the MLP, norms and positions, and the input checks and
the loss. One sequence position carries one token per codebook (MusicGen's delay pattern, see
delay_pattern_music_hybrid.py); their embeddings are summed and one linear head per codebook predicts the next
position's codes.

The other parts each live in a file of their own, all shipped next to the weights by save_pretrained (they import
only each other, relatively inside a checkpoint folder, and installed libraries): the configuration; the Mamba-1
mixer (mamba_music_hybrid.py) with its selective scan and memory caching; the Mamba-2 and Gated DeltaNet mixers
(mamba2_music_hybrid.py, gated_deltanet_music_hybrid.py, with what the recurrent mixers share in recurrent_parts_music_hybrid.py
and their memory caching in matrix_memory_caching_music_hybrid.py); the conditions and classifier-free
guidance (conditions_music_hybrid.py); the decoding cache (cache_music_hybrid.py); generate() and sampling
(generation_music_hybrid.py); what makes decoding fast (fast_decoding_music_hybrid.py); and the codec, for
decode_audio / encode_audio (processing_music_hybrid.py).

A sequence mixer is any class registered with `register_mixer(kind, cls)`: built as `cls(config, layer_idx)`, it
gives its decoding state with `init_state(batch_size, max_positions, device, dtype, **settings)` (a dict of
batch-first tensors, or None) and maps (B, L, D) to (B, L, D) with `forward(hidden_states, state=None,
**kwargs)`, continuing from and updating the state when given one. The backbone passes every mixer the same
keyword inputs (cache, positions, rotary, attention_mask); each takes those it uses. See docs/architecture.md.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .cache_music_hybrid import MusicHybridCache
    from .conditions_music_hybrid import ALL_CONDITION_ARGUMENTS, CONDITIONS, missing_condition, reads_cross_attention
    from .configuration_music_hybrid import ATTENTION, MIXER_LAYER_TYPES, MusicHybridConfig
    from .delay_pattern_music_hybrid import IGNORE_INDEX, apply_delay_pattern, codes_to_model_inputs, undo_delay_pattern
    from .fast_decoding_music_hybrid import refuse_saving_quantized
    from .gated_deltanet_music_hybrid import GatedDeltaNetMixer
    from .generation_music_hybrid import MusicHybridGenerationMixin, default_generation_config
    from .mamba_music_hybrid import MambaMixer
    from .mamba2_music_hybrid import Mamba2Mixer
    from .processing_music_hybrid import CodecUnavailableError, load_codec, save_codec_files, waveform_clips
except ImportError:  # from the repository root they are plain modules
    from cache_music_hybrid import MusicHybridCache
    from conditions_music_hybrid import ALL_CONDITION_ARGUMENTS, CONDITIONS, missing_condition, reads_cross_attention
    from configuration_music_hybrid import ATTENTION, MIXER_LAYER_TYPES, MusicHybridConfig
    from delay_pattern_music_hybrid import IGNORE_INDEX, apply_delay_pattern, codes_to_model_inputs, undo_delay_pattern
    from fast_decoding_music_hybrid import refuse_saving_quantized
    from gated_deltanet_music_hybrid import GatedDeltaNetMixer
    from generation_music_hybrid import MusicHybridGenerationMixin, default_generation_config
    from mamba_music_hybrid import MambaMixer
    from mamba2_music_hybrid import Mamba2Mixer
    from processing_music_hybrid import CodecUnavailableError, load_codec, save_codec_files, waveform_clips

# torch.export sets it; torch releases before it existed never export this model (see the export test)
is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)

__all__ = [
    "IGNORE_INDEX", "MIXERS", "MusicHybridCache", "MusicHybridForCausalLM", "MusicHybridModel", "apply_delay_pattern",
    "codes_to_model_inputs", "register_mixer", "undo_delay_pattern",
]


# --------------------------------------------------------------------------------------------------------------------
# Sequence mixers
# --------------------------------------------------------------------------------------------------------------------

# kind -> mixer class; the built-in kinds are registered at the end of this file.
MIXERS = {}


def register_mixer(kind, cls, layer_type=None):
    """Make `cls` the sequence mixer of kind `kind` (a name for `config.mixer_types`). `layer_type`, transformers'
    name of the layer (default: the class's `layer_type`, else "linear_attention", as every recurrent layer), is
    what `config.layer_types` records. Register before building or loading a model that uses the kind."""
    MIXERS[kind] = cls
    MIXER_LAYER_TYPES[kind] = layer_type or getattr(cls, "layer_type", "linear_attention")
    return cls


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MusicHybridModelOutput(ModelOutput):
    """last_hidden_state: (B, T, hidden) after the final norm; hidden_states (with `output_hidden_states`): the
    embeddings, then the output of every layer, the last one after the final norm (as transformers models)."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: "MusicHybridCache | None" = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MusicHybridCausalLMOutput(ModelOutput):
    """loss: mean (or weighted mean) of `codebook_losses` (see `MusicHybridForCausalLM.forward` for the share of an
    accumulated batch); logits: (B, K, T, codebook_size)."""

    loss: torch.FloatTensor | None = None
    codebook_losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: "MusicHybridCache | None" = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class MusicHybridPreTrainedModel(PreTrainedModel):
    config_class = MusicHybridConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MusicHybridDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _is_stateful = True  # recurrent states: no assisted decoding or cache cropping
    # The SSM's decay rates and skip weights stay float32 when loaded in half precision, as in transformers' Mamba
    # models: exp(A) of a bfloat16 A_log is too coarse for the long-range decays.
    _keep_in_fp32_modules_strict = ["mixer.A_log", r"mixer\.D$"]

    @classmethod
    def _can_set_attn_implementation(cls):
        """set_attn_implementation works at run time: every attention call reads config._attn_implementation
        (transformers' own check looks for get_interface in the source, which the attention avoids for dynamo)."""
        return True

    def resize_token_embeddings(self, *args, **kwargs):
        raise ValueError(
            "resize_token_embeddings: the vocabulary is the codec's (codebook_size codes per codebook plus pad, bos "
            "and eos) and cannot grow; a codec with other codes needs a new model "
            "(MusicHybridConfig(codebook_size=...))"
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained, with auto_map naming the base model too: AutoModel then loads it from a
        saved causal LM with remote code (save_pretrained itself writes only the saved class). A model quantized for
        decoding is refused before anything is written (see `refuse_saving_quantized`)."""
        refuse_saving_quantized(self)
        auto_map = getattr(self.config, "auto_map", {})
        self.config.auto_map = {"AutoModel": "modeling_music_hybrid.MusicHybridModel", **auto_map}
        # A fitted codec's parameters go with the weights (before them: a push uploads the folder as it is then).
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        save_codec_files(self.config.codec, save_directory, self.config.name_or_path or None)
        backbone = getattr(self, self.base_model_prefix, self)
        for provider in backbone.condition_providers().values():
            if hasattr(provider, "save_files"):  # the text condition's tokenizer
                provider.save_files(save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' initialisation, except for parts that initialise themselves (`init_own_weights`: a
        mixer's special parameters, a condition's zero rows) and the rotary tables (buffers rebuilt after loading)."""
        init_own_weights = getattr(module, "init_own_weights", None)
        if callable(init_own_weights):
            init_own_weights()
            return
        super()._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class MusicHybridModel(MusicHybridPreTrainedModel):
    """Embeddings (one table per codebook, summed), the conditions the config asks for (see
    conditions_music_hybrid.py), positions, the decoder layers and the final norm."""

    def __init__(self, config):
        super().__init__(config)
        # One (K * vocab) table holds the K per-codebook tables back to back: one lookup embeds every codebook.
        self.embed_tokens = nn.Embedding(config.num_codebooks * config.vocab_size, config.hidden_size)
        self.register_buffer(
            "codebook_offsets", torch.arange(config.num_codebooks) * config.vocab_size, persistent=False
        )
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        elif config.position_embedding_type == "rope":
            self.rotary_emb = RotaryEmbedding(config)
        self.condition_arguments = [argument for argument, kind in CONDITIONS.items() if kind.wanted_by(config)]
        for argument in self.condition_arguments:
            self.add_module(CONDITIONS[argument].module_name, CONDITIONS[argument](config))
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(MusicHybridDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # a non-persistent buffer: rebuilt after meta-device loading
            init.copy_(self.codebook_offsets, torch.arange(self.config.num_codebooks) * self.config.vocab_size)
            # here, since transformers passes over modules without parameters of their own (in custom code)
            if self.config.text_encoder is not None:
                self.text_condition.init_encoder()

    def condition_providers(self):
        """forward() argument -> the provider of that condition, for the conditions this model has."""
        return {argument: getattr(self, CONDITIONS[argument].module_name) for argument in self.condition_arguments}

    def new_cache(self, batch_size, max_length, attention_window=None, fixed_shape=False):
        """An empty `MusicHybridCache` of every layer's state for `max_length` positions (see its docstring)."""
        mixers = [layer.mixer for layer in self.layers]
        return MusicHybridCache(
            mixers, batch_size, max_length, self.device, self.dtype, attention_window=attention_window,
            fixed_shape=fixed_shape,
        )

    def forward(
        self, input_ids, cache=None, genre_ids=None, use_cache=None, output_hidden_states=None, attention_mask=None,
        return_dict=None, **kwargs,
    ):
        """input_ids (B, K, T) -> `MusicHybridModelOutput`; with a cache, continue from it and advance it (with
        `use_cache` and no cache, a new one is made). genre_ids (and every other condition's arguments, see
        conditions_music_hybrid.py): (B,) genre ids of a conditional model, None for the null genre;
        text_input_ids (B, S) and text_attention_mask (B, S), or text_hidden_states (B, S, encoder hidden) with the
        mask, of a text-conditioned model (`tokenize_text`), None for the null description. A cache keeps the
        description of its first input (see `ConditionCrossAttention`). attention_mask: all ones or None (see
        `refuse_unused_arguments`). output_hidden_states and return_dict default to the config's, as in
        transformers models."""
        given = {"genre_ids": genre_ids}
        given.update((name, kwargs.pop(name)) for name in ALL_CONDITION_ARGUMENTS if name in kwargs)
        refuse_unused_arguments(attention_mask, kwargs, self.config)
        check_token_ids(input_ids, self.config, "input_ids", self.config.vocab_size)
        conditions = self.checked_conditions(given, input_ids.shape[0], input_ids.device)
        if use_cache and cache is None:
            cache = self.new_cache(input_ids.shape[0], self.config.max_position_embeddings)
        past_length = 0 if cache is None else cache.length
        seq_length = input_ids.shape[2]
        if self.config.position_embedding_type == "learned" and past_length + seq_length > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {past_length + seq_length} positions exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} of this model (learned positions)"
            )
        positions = torch.arange(past_length, past_length + seq_length, device=input_ids.device)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.decode(input_ids, positions, cache, all_hidden_states, **conditions)
        if cache is not None:
            cache.advance(seq_length)
        output = MusicHybridModelOutput(
            last_hidden_state=hidden_states, cache=cache,
            hidden_states=None if all_hidden_states is None else tuple(all_hidden_states),
        )
        return output if returns_dict(return_dict, self.config) else output.to_tuple()

    def checked_conditions(self, given, batch, device):
        """The model's conditions for a batch: each provider's checked values (its null values where none are
        given). A condition this model does not have is refused."""
        providers = self.condition_providers().values()
        taken = {argument for provider in providers for argument in provider.arguments}
        for argument, values in given.items():
            if values is not None and argument not in taken:
                raise ValueError(f"{argument} {missing_condition(argument)}")
        conditions = {}
        for provider in providers:
            conditions.update(provider.checked(batch, device, **{name: given.get(name) for name in provider.arguments}))
        return conditions

    def decode(self, input_ids, positions, cache=None, all_hidden_states=None, **conditions):
        """The forward pass at `positions` (a tensor), leaving `cache.advance` to the caller; `conditions` are the
        checked values of every condition the model has (see `checked_conditions`). A list passed as
        `all_hidden_states` receives the input of every layer and the final output.

        For one position and a fixed-shape cache this reads no Python value that changes from step to step, and
        its shapes change only when the cache shows more slots: `compile_decoding` compiles it (with dynamic
        shapes) once for a whole generation.
        """
        seq_length = input_ids.shape[2]
        token_ids = input_ids + self.codebook_offsets[None, :, None]
        hidden_states = self.embed_tokens(token_ids).sum(dim=1)
        condition_memory = None  # what cross-attention reads, unless the cache holds its keys and values already
        for provider in self.condition_providers().values():
            values = {name: conditions[name] for name in provider.arguments if name in conditions}
            if hasattr(provider, "layer_input"):
                hidden_states = hidden_states + provider.layer_input(**values)
            if hasattr(provider, "cross_attention_input") and (cache is None or not cache.holds_condition_keys_values):
                condition_memory = provider.cross_attention_input(**values)
        rotary = None
        if self.config.position_embedding_type == "learned":
            hidden_states = hidden_states + self.embed_positions(positions)
        elif self.config.position_embedding_type == "rope":
            rotary = self.rotary_emb(positions, hidden_states.dtype)
        hidden_states = self.dropout(hidden_states)
        if self.config.num_attention_layers == 0:
            attention_mask = None
        elif cache is not None and cache.fixed_shape and seq_length == 1:
            attention_mask = cache.single_position_mask(positions, hidden_states.dtype)
        else:
            attention_mask = self.attention_mask(seq_length, cache, hidden_states)

        for layer, state in zip(self.layers, cache.states if cache is not None else [None] * len(self.layers)):
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(
                hidden_states, state=state, condition_memory=condition_memory, cache=cache, positions=positions,
                rotary=rotary, attention_mask=attention_mask,
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return hidden_states

    def attention_mask(self, seq_length, cache, hidden_states):
        """Additive causal mask for the attention layers, or None where the attention function is causal itself.

        A single new position attends to everything cached (a sliding-window cache holds only the window).
        A block starting at position 0 is plainly causal, which sdpa and flash handle without a mask.
        """
        past_length = 0 if cache is None else cache.length
        window = None if cache is None else cache.attention_window
        if seq_length == 1 or self.config.num_attention_layers == 0:
            return None
        key_length = seq_length if window is not None else past_length + seq_length
        plain_causal = past_length == 0 and (window is None or seq_length <= window)
        if plain_causal and self.config._attn_implementation != "eager":
            return None
        query_positions = torch.arange(past_length, past_length + seq_length, device=hidden_states.device)
        key_positions = torch.arange(past_length + seq_length - key_length, past_length + seq_length, device=hidden_states.device)
        distance = query_positions[:, None] - key_positions[None, :]
        allowed = distance >= 0
        if window is not None:
            allowed &= distance < window
        mask = torch.zeros(allowed.shape, dtype=hidden_states.dtype, device=hidden_states.device)
        return mask.masked_fill(~allowed, torch.finfo(hidden_states.dtype).min)[None, None]



class MusicHybridForCausalLM(MusicHybridPreTrainedModel, MusicHybridGenerationMixin, GenerationMixin):
    """The backbone plus one linear head per codebook over the real codes (special ids are never predicted);
    generate() and the decoding settings come from `MusicHybridGenerationMixin`."""

    # HF Trainer passes `num_items_in_batch` to forward, which then returns its share of the token-weighted loss of
    # the whole accumulated batch (and Trainer neither divides it by the accumulation steps nor averages it again).
    accepts_loss_kwargs = True

    def __init__(self, config):
        super().__init__(config)
        self.model = MusicHybridModel(config)
        # K heads stored as one (K * codebook_size, hidden) matrix: one matmul predicts every codebook.
        self.lm_head = nn.Linear(config.hidden_size, config.num_codebooks * config.codebook_size, bias=False)
        self.post_init()
        self.generation_config = default_generation_config(config)
        self._compiled_decode, self._decode_with_cuda_graph = None, False  # see compile_decoding
        self._codec = None  # (identity as JSON, Codec): see `codec`

    def forward(
        self, input_ids, labels=None, genre_ids=None, cache=None, use_cache=None, logits_to_keep=0,
        output_hidden_states=None, return_dict=None, attention_mask=None, num_items_in_batch=None,
        text_input_ids=None, text_attention_mask=None, text_hidden_states=None, **unused,
    ):
        """input_ids: (B, K, T) delayed codes starting with the start column; labels: the same layout with -100
        where nothing is predicted (see `codes_to_model_inputs`). genre_ids: (B,) int64 genre ids of a conditional
        model (`config.genre_id(name)`; None: the null genre). text_input_ids and text_attention_mask (B, S) of a
        text-conditioned model (`tokenize_text`), or text_hidden_states with the mask (None: no description). With `use_cache`, a new `MusicHybridCache` is made
        when none is given. `logits_to_keep=n` computes logits for the last n positions only (0: all).

        The loss is the (weighted) mean over codebooks of each codebook's mean cross entropy over its valid
        positions, smoothed by `config.label_smoothing`. num_items_in_batch: the valid labels of a whole
        accumulated batch, all codebooks together (HF Trainer passes it): the loss is then this batch's share,
        its summed token losses over num_items_in_batch / K per codebook, so that gradient accumulation and DDP
        give the loss and gradients of one large batch. attention_mask: all ones or None; arguments it does not
        use raise ValueError (see `refuse_unused_arguments`)."""
        if labels is None and num_items_in_batch is not None:
            raise ValueError(
                "forward() got num_items_in_batch without labels: HF Trainer takes the labels away for "
                "TrainingArguments(label_smoothing_factor=...) (or a compute_loss_func) and would smooth them "
                "unshifted, against the wrong positions. Leave label_smoothing_factor at 0 and set "
                "model.config.label_smoothing instead: it smooths the shifted per-codebook loss over valid positions."
            )
        # the text arguments are named in the signature: HF Trainer keeps only dataset columns that forward names
        backbone = self.model(
            input_ids, cache, genre_ids, use_cache, output_hidden_states, attention_mask, return_dict=True,
            text_input_ids=text_input_ids, text_attention_mask=text_attention_mask,
            text_hidden_states=text_hidden_states, **unused,
        )
        logits = self.codebook_logits(backbone.last_hidden_state[:, -logits_to_keep:])
        loss = codebook_losses = None
        if labels is not None:
            check_token_ids(labels, self.config, "labels", self.config.codebook_size, allow_ignore=True)
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}")
            if logits_to_keep:
                raise ValueError("labels need logits for every position: leave logits_to_keep at 0")
            sums, counts = codebook_loss_sums(logits[..., :-1, :], labels[..., 1:], self.config.label_smoothing)
            codebook_losses = sums / counts.clamp(min=1)
            if num_items_in_batch is None:
                loss = weighted_codebook_mean(codebook_losses, self.config.codebook_loss_weights)
            else:
                share = sums * self.config.num_codebooks / num_items_in_batch
                loss = weighted_codebook_mean(share, self.config.codebook_loss_weights)
        output = MusicHybridCausalLMOutput(
            loss=loss, codebook_losses=codebook_losses, logits=logits, cache=backbone.cache,
            hidden_states=backbone.hidden_states,
        )
        return output if returns_dict(return_dict, self.config) else output.to_tuple()

    @property
    def codec(self):
        """The codec that `config.codec` names (processing_music_hybrid.Codec: a transformers DacModel, pretrained
        or seeded random), built on first use on the model's device and kept; built again if config.codec changes."""
        identity = self.config.codec
        if identity is None:
            raise ValueError(
                "this model records no codec (config.codec is None): set model.config.codec to the identity of the "
                "codec its training codes came from, e.g. processing_music_hybrid.pretrained_codec_identity()"
            )
        key = json.dumps(identity, sort_keys=True)
        if self._codec is None or self._codec[0] != key:
            try:
                self._codec = (key, load_codec(identity, device=self.device, location=self.config.name_or_path or None))
            except CodecUnavailableError as error:
                raise CodecUnavailableError(
                    f"this model's codes come from the codec {identity.get('model_id')!r} (config.codec: backend "
                    f"{identity.get('backend')!r}, revision {identity.get('revision')!r}), which cannot be loaded: "
                    f"{error} From Python: connect once to the Hugging Face Hub (the weights are then cached), or "
                    "download them and set model.config.codec['model_id'] to that folder."
                ) from error
        return self._codec[1]

    def decode_audio(self, codes):
        """Codes (B, K, T) in natural layout (what generate returns, or its output object) -> float32 waveforms
        (B, T * hop) on the CPU at `config.codec["sample_rate"]`, decoded by `codec`."""
        return self.codec.decode(getattr(codes, "sequences", codes))

    def encode_audio(self, waveform, sampling_rate):
        """Audio -> codes (B, K, T) int64 on the model's device, a prompt for generate(). waveform: (samples,) one
        mono clip, (channels, samples) one clip (channels averaged), or (batch, channels, samples) of equal length;
        at any `sampling_rate`, resampled to the codec's with soxr."""
        return torch.stack(self.codec.encode(waveform_clips(waveform, sampling_rate))).to(self.device)

    @property
    def text_tokenizer(self):
        """The tokenizer of a text-conditioned model's encoder (shipped in its checkpoint's text_tokenizer folder)."""
        return self._text_condition().tokenizer

    def tokenize_text(self, descriptions):
        """Descriptions (a list of str; None or "": no description) -> forward()'s text arguments,
        {"text_input_ids", "text_attention_mask"} (B, S) int64 on the model's device, padded and cut to
        `config.max_text_length` tokens."""
        return self._text_condition().tokenize(descriptions, self.device)

    def _text_condition(self):
        if self.config.text_encoder is None:
            raise ValueError(
                "this model has no text condition (config.text_encoder is None): make one with "
                "MusicHybridConfig(text_encoder=...)"
            )
        return self.model.text_condition

    def codebook_logits(self, hidden_states):
        """(B, T, hidden) -> (B, K, T, codebook_size)."""
        batch, seq_length, _ = hidden_states.shape
        logits = self.lm_head(hidden_states).view(batch, seq_length, self.config.num_codebooks, -1)
        return logits.transpose(1, 2)


# --------------------------------------------------------------------------------------------------------------------
# Decoder layer, attention, MLP, norm, positions
# --------------------------------------------------------------------------------------------------------------------


class MusicHybridDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block: the sequence mixer of the layer's kind (`config.mixer_types`, see `MIXERS`), then,
    in a text-conditioned model, cross-attention to the description (MusicGen's order), then an MLP (attention
    layers always; recurrent layers when `config.mamba_mlp`). transformers' gradient checkpointing selects layers
    of this class (`gradient_checkpointing_enable`)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = MIXERS[config.mixer_types[layer_idx]](config, layer_idx)
        self.has_cross_attention = reads_cross_attention(config)
        if self.has_cross_attention:
            self.cross_attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.cross_attention = ConditionCrossAttention(config, layer_idx)
        self.has_mlp = config.layer_types[layer_idx] == ATTENTION or config.mamba_mlp
        if self.has_mlp:
            self.post_mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, state=None, condition_memory=None, **mixer_inputs):
        """mixer_inputs: what the backbone passes every mixer (cache, positions, rotary, attention_mask);
        condition_memory: what cross-attention reads (see `ConditionCrossAttention`)."""
        hidden_states = hidden_states + self.dropout(self.mixer(self.input_norm(hidden_states), state, **mixer_inputs))
        if self.has_cross_attention:
            normalized = self.cross_attention_norm(hidden_states)
            hidden_states = hidden_states + self.dropout(
                self.cross_attention(normalized, condition_memory, mixer_inputs["cache"])
            )
        if self.has_mlp:
            hidden_states = hidden_states + self.dropout(self.mlp(self.post_mixer_norm(hidden_states)))
        return hidden_states


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention: the fallback when sdpa / flash are not wanted."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def repeat_kv(states, groups):
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


class MusicHybridAttention(nn.Module):
    """Causal multi-head attention with optional grouped-query heads and RoPE, run through transformers'
    attention interface (sdpa by default, eager fallback, flash when installed). Its decoding state holds the keys
    and values of every position, or a ring of the last `attention_window` in sliding-window mode."""

    layer_type = ATTENTION

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def init_state(self, batch_size, max_positions, device, dtype, attention_window=None, fixed_shape=False, **settings):
        """Keys and values (B, kv heads, slots, head_dim) for `max_positions` positions, or the last
        `attention_window`. A fixed-shape cache keeps one slot spare, so the visible slots are always a strict part
        of the buffer."""
        slots = max_positions if attention_window is None else min(attention_window, max_positions)
        shape = (batch_size, self.num_key_value_heads, slots + fixed_shape, self.head_dim)
        return {"keys": torch.zeros(shape, dtype=dtype, device=device), "values": torch.zeros(shape, dtype=dtype, device=device)}

    def forward(self, hidden_states, state=None, cache=None, positions=None, rotary=None, attention_mask=None, **kwargs):
        query, key, value = (self.heads(projection, hidden_states) for projection in (self.q_proj, self.k_proj, self.v_proj))
        if rotary is not None:
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        if state is not None:
            key, value = self.update_state(state, cache, key, value, positions)
        return self.attend(query, key, value, attention_mask)

    def heads(self, projection, states):
        """(B, L, D) -> the projection's heads (B, heads, L, head_dim)."""
        batch, length, _ = states.shape
        return projection(states).view(batch, length, -1, self.head_dim).transpose(1, 2)

    def attend(self, query, key, value, attention_mask):
        """Attention of the query heads over the key and value heads, through transformers' attention interface,
        then the output projection."""
        batch, _, seq_length, _ = query.shape
        # Plain indexing, which torch.compile traces on every supported torch (older dynamo breaks the graph inside
        # get_interface's Mapping methods).
        implementation = self.config._attn_implementation
        one_query_compiled_on_cpu = seq_length == 1 and query.device.type == "cpu" and torch.compiler.is_compiling()
        if implementation == "sdpa" and one_query_compiled_on_cpu:
            # inductor fuses the plain attention's scale, mask and softmax between two products, which beats sdpa's
            # CPU kernel for one query
            implementation = "eager"
        attention = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        output, _ = attention(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling,
        )
        return self.o_proj(output.reshape(batch, seq_length, -1))

    @staticmethod
    def update_state(state, cache, key, value, positions):
        """Store the new keys/values (B, heads, T, head_dim) of `positions`; return those to attend over.

        In a fixed-shape cache a single position is written at its slot by index, and attention reads the visible
        slots (see `MusicHybridCache`). Otherwise the filled part is read exactly; in sliding-window mode the
        buffer is a ring, slot = position % capacity: keys carry their positions (RoPE) and a single query attends
        to all of them, so their order in the buffer does not matter."""
        keys, values, capacity = state["keys"], state["values"], cache.capacity
        if cache.fixed_shape and key.shape[2] == 1:
            visible = cache.visible_slots.shape[0]
            keys, values = keys[:, :, :visible], values[:, :, :visible]
            slot = positions % capacity  # the position itself unless this is a ring; always visible
            keys.index_copy_(2, slot, key)
            values.index_copy_(2, slot, value)
            return keys, values
        start, new = cache.length, key.shape[2]
        if cache.attention_window is None:
            if start + new > capacity:
                raise ValueError(f"The cache holds {capacity} positions; {start + new} requested")
            keys[:, :, start : start + new] = key
            values[:, :, start : start + new] = value
            return keys[:, :, : start + new], values[:, :, : start + new]
        if new > 1 and start > 0:
            raise ValueError("A sliding-window cache takes a multi-position input only as its first input")
        kept = min(new, capacity)
        slots = torch.arange(start + new - kept, start + new, device=key.device) % capacity
        keys[:, :, slots] = key[:, :, -kept:]
        values[:, :, slots] = value[:, :, -kept:]
        if new > 1:
            return key, value
        filled = min(start + 1, capacity)
        return keys[:, :, :filled], values[:, :, :filled]


class ConditionCrossAttention(MusicHybridAttention):
    """Attention from every position to the states a condition hands the layers (the encoded description, see
    conditions_music_hybrid.TextCondition), with the attention's heads and interface: no positions (the keys are
    not rotated) and no causal order, padding masked. Its keys and values depend on the description alone: with a
    cache they are computed at the first input and kept there (`MusicHybridCache.condition_keys_values`), so a
    decoding step projects only its query."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.is_causal = False

    def forward(self, hidden_states, condition_memory, cache=None):
        """condition_memory: (states (B, S, D), additive padding mask (B, 1, 1, S)); unused once the cache holds
        this layer's keys and values."""
        kept = None if cache is None else cache.condition_keys_values[self.layer_idx]
        if kept is None:
            states, key_mask = condition_memory
            kept = (self.heads(self.k_proj, states), self.heads(self.v_proj, states), key_mask)
            if cache is not None:
                cache.condition_keys_values[self.layer_idx] = kept
        key, value, key_mask = kept
        return self.attend(self.heads(self.q_proj, hidden_states), key, value, key_mask)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, hidden_states):
        return self.fc_out(self.act(self.fc_in(hidden_states)))


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states):
        normalized = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.eps)
        return self.weight * normalized.to(hidden_states.dtype)


class RotaryEmbedding(nn.Module):
    """cos / sin tables of rotary position embeddings, computed for the positions at hand (any length)."""

    def __init__(self, config):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self):
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def forward(self, positions, dtype):
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(states, cos, sin):
    first, second = states.chunk(2, dim=-1)
    return states * cos + torch.cat([-second, first], dim=-1) * sin


# --------------------------------------------------------------------------------------------------------------------
# Input checks and the loss
# --------------------------------------------------------------------------------------------------------------------


def refuse_unused_arguments(attention_mask, unused, config):
    """forward() takes transformers' usual arguments where it honours them and refuses the rest by name. Callers
    such as PEFT pass some as None or False (output_attentions, inputs_embeds), which ask for nothing; the config's
    output_attentions asks as the argument does.

    attention_mask: the model has no padding mask: a mask of all ones (no padding) is accepted and changes
    nothing. Short clips are padded with pad frames, whose labels are -100 (see `codes_to_model_inputs`)."""
    given = sorted(name for name, value in unused.items() if value is not None and value is not False)
    if given:
        raise ValueError(f"forward() does not take {', '.join(given)}")
    if config.output_attentions and "output_attentions" not in unused:
        raise ValueError("config.output_attentions: this model does not return attention weights; set it to False")
    if attention_mask is not None and not is_exporting() and not bool(torch.all(attention_mask == 1)):
        raise ValueError(
            "attention_mask: this model takes no padding mask, only all ones; pad short clips with pad frames "
            "(labels -100), as codes_to_model_inputs does"
        )


def check_token_ids(ids, config, name, upper, allow_ignore=False):
    """Shape and range checks that turn user mistakes into ValueErrors instead of index errors deep inside (the
    range check reads the values, which an exported program cannot: it is skipped while exporting)."""
    if not torch.is_tensor(ids) or ids.dim() != 3 or ids.shape[1] != config.num_codebooks:
        shape = tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"{name} must have shape (batch, {config.num_codebooks}, positions), got {shape}")
    if ids.is_floating_point():
        raise ValueError(f"{name} must be integers")
    if is_exporting() or ids.numel() == 0:
        return
    if not bool(((ids >= 0) & (ids < upper) | (allow_ignore & (ids == IGNORE_INDEX))).all()):
        ignore = " or -100" if allow_ignore else ""
        raise ValueError(f"{name} must lie in [0, {upper}){ignore}")


def returns_dict(return_dict, config):
    """Whether forward returns an output object: the argument, else the config's return_dict (as transformers)."""
    return config.return_dict if return_dict is None else return_dict


def codebook_loss_sums(logits, labels, label_smoothing=0.0):
    """Summed cross entropy of each codebook over its valid (label != -100) positions, and their counts: (K,), (K,)."""
    num_codebooks, vocab = logits.shape[1], logits.shape[-1]
    token_losses = F.cross_entropy(
        logits.float().reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing, reduction="none",
    ).view(labels.shape)
    valid = (labels != IGNORE_INDEX).transpose(0, 1).reshape(num_codebooks, -1)
    sums = token_losses.transpose(0, 1).reshape(num_codebooks, -1).sum(dim=1)
    return sums, valid.sum(dim=1)


def weighted_codebook_mean(codebook_losses, weights):
    if weights is None:
        return codebook_losses.mean()
    weights = torch.tensor(weights, dtype=codebook_losses.dtype, device=codebook_losses.device)
    return (codebook_losses * weights).sum() / weights.sum()


# --------------------------------------------------------------------------------------------------------------------
# Registration: the built-in mixers; save_pretrained writes auto_map and copies the shipped files; local use needs no
# remote code.
# --------------------------------------------------------------------------------------------------------------------

register_mixer("attention", MusicHybridAttention)
register_mixer("mamba", MambaMixer)
register_mixer("mamba2", Mamba2Mixer)
register_mixer("gated_deltanet", GatedDeltaNetMixer)
MusicHybridConfig.register_for_auto_class()
MusicHybridModel.register_for_auto_class("AutoModel")
MusicHybridForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register(MusicHybridConfig.model_type, MusicHybridConfig, exist_ok=True)
AutoModel.register(MusicHybridConfig, MusicHybridModel, exist_ok=True)
AutoModelForCausalLM.register(MusicHybridConfig, MusicHybridForCausalLM, exist_ok=True)
