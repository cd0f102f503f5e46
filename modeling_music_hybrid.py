"""A language model over delayed DAC codes: a Transformer or a Jamba-style Mamba/attention hybrid.

Top-down: the delay pattern, the model (backbone layers, LM head, loss, generate), then its parts (cache,
attention, Mamba-1 mixer and its selective scan, MLP, norms, positions). One sequence position carries one
token per codebook (MusicGen's delay pattern: codebook k is shifted right by k frames); their embeddings are
summed and one linear head per codebook predicts the next position's codes.

This file, configuration_music_hybrid.py, fast_decoding_music_hybrid.py (the machinery that makes decoding fast)
and processing_music_hybrid.py (the codec, for decode_audio / encode_audio) import only each other and installed
libraries: save_pretrained copies them next to the weights for trust_remote_code loading, where they form a package.
"""

import copy
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .configuration_music_hybrid import ATTENTION, MAMBA, MusicHybridConfig
    from .fast_decoding_music_hybrid import (
        CUDAGraphStep, Int8Linear, decoding_linear, decoding_threads, is_plain_layer, pack_linear_weights,
        quantize_linear_layers,
    )
    from .processing_music_hybrid import CodecUnavailableError, load_codec, save_codec_files, waveform_clips
except ImportError:  # from the repository root they are plain modules
    from configuration_music_hybrid import ATTENTION, MAMBA, MusicHybridConfig
    from fast_decoding_music_hybrid import (
        CUDAGraphStep, Int8Linear, decoding_linear, decoding_threads, is_plain_layer, pack_linear_weights,
        quantize_linear_layers,
    )
    from processing_music_hybrid import CodecUnavailableError, load_codec, save_codec_files, waveform_clips

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Delay pattern
# --------------------------------------------------------------------------------------------------------------------


def apply_delay_pattern(codes, pad_token_id):
    """(B, K, T) natural codes -> (B, K, T + K - 1): codebook k shifted right by k frames, delay slots = pad."""
    batch, num_codebooks, num_frames = codes.shape
    delayed = codes.new_full((batch, num_codebooks, num_frames + num_codebooks - 1), pad_token_id)
    for k in range(num_codebooks):
        delayed[:, k, k : k + num_frames] = codes[:, k]
    return delayed


def undo_delay_pattern(delayed):
    """(B, K, T + K - 1) delayed codes -> (B, K, T) natural codes."""
    num_codebooks = delayed.shape[1]
    num_frames = delayed.shape[2] - num_codebooks + 1
    if num_frames < 0:
        raise ValueError(f"A delayed sequence of {num_codebooks} codebooks needs at least {num_codebooks - 1} positions")
    return torch.stack([delayed[:, k, k : k + num_frames] for k in range(num_codebooks)], dim=1)


def codes_to_model_inputs(codes, config):
    """Natural codes (B, K, T) -> model inputs of T + K positions: a start column, then the delayed codes.

    Labels are the inputs with every special id (start, pad) replaced by -100, so that right-padding a short
    track with pad frames masks it out of the loss. The model shifts labels by one position itself.
    """
    start = codes.new_full((codes.shape[0], codes.shape[1], 1), config.bos_token_id)
    input_ids = torch.cat([start, apply_delay_pattern(codes, config.pad_token_id)], dim=2)
    labels = input_ids.masked_fill(input_ids >= config.codebook_size, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}


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
    _is_stateful = True  # Mamba state: no assisted decoding or cache cropping
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
        decoding is refused before anything is written: its int8 weights would load as wrong float weights."""
        if any(isinstance(module, Int8Linear) for module in self.modules()):
            raise ValueError(
                "this model's linear layers hold int8 weights (quantize_weights), which from_pretrained would load "
                "as wrong float weights: save the float32 model, and quantize it after loading"
            )
        auto_map = getattr(self.config, "auto_map", {})
        self.config.auto_map = {"AutoModel": "modeling_music_hybrid.MusicHybridModel", **auto_map}
        # A fitted codec's parameters go with the weights (before them: a push uploads the folder as it is then).
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        save_codec_files(self.config.codec, save_directory, self.config.name_or_path or None)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MambaMixer):
            module.reset_ssm_parameters()
        elif isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class MusicHybridModel(MusicHybridPreTrainedModel):
    """Embeddings (one table per codebook, summed), the genre (conditional models), positions, the decoder layers
    and the final norm.

    A conditional model adds its genre's embedding (the null genre's when none is given) to every position, next to
    the code embeddings: every layer type sees it at every step without a cache of its own, so a decoding step
    equals the full forward pass as it does unconditionally, and the positions stay those of the codes.
    """

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
        if config.genres is not None:
            # The null genre is the last row. Made from zeros, without random draws (see _init_weights).
            rows = len(config.genres) + 1
            self.embed_genres = nn.Embedding(rows, config.hidden_size, _weight=torch.zeros(rows, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(MusicHybridDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is getattr(self, "embed_genres", None):
            # Zeros (and no random draws): a new conditional model, or one fine-tuned from an unconditional
            # checkpoint, starts as the unconditional model with the same seed and learns the genres from there.
            init.zeros_(module.weight)
            return
        super()._init_weights(module)
        if module is self:  # a non-persistent buffer: rebuilt after meta-device loading
            init.copy_(self.codebook_offsets, torch.arange(self.config.num_codebooks) * self.config.vocab_size)

    def forward(
        self, input_ids, cache=None, genre_ids=None, use_cache=None, output_hidden_states=None, attention_mask=None,
        return_dict=None, **unused,
    ):
        """input_ids (B, K, T) -> `MusicHybridModelOutput`; with a cache, continue from it and advance it (with
        `use_cache` and no cache, a new one is made). genre_ids: (B,) genre ids of a conditional model, None for
        the null genre (see `check_genre_ids`). attention_mask: all ones or None (see `refuse_unused_arguments`)."""
        refuse_unused_arguments(attention_mask, unused)
        check_token_ids(input_ids, self.config, "input_ids", self.config.vocab_size)
        genre_ids = check_genre_ids(genre_ids, self.config, input_ids.shape[0], input_ids.device)
        if use_cache and cache is None:
            cache = MusicHybridCache(
                self.config, input_ids.shape[0], self.config.max_position_embeddings, input_ids.device, self.dtype
            )
        past_length = 0 if cache is None else cache.length
        seq_length = input_ids.shape[2]
        if self.config.position_embedding_type == "learned" and past_length + seq_length > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {past_length + seq_length} positions exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} of this model (learned positions)"
            )
        positions = torch.arange(past_length, past_length + seq_length, device=input_ids.device)
        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.decode(input_ids, positions, cache, genre_ids, all_hidden_states)
        if cache is not None:
            cache.advance(seq_length)
        output = MusicHybridModelOutput(
            last_hidden_state=hidden_states, cache=cache,
            hidden_states=None if all_hidden_states is None else tuple(all_hidden_states),
        )
        return output if return_dict is not False else output.to_tuple()

    def decode(self, input_ids, positions, cache=None, genre_ids=None, all_hidden_states=None):
        """The forward pass at `positions` (a tensor), leaving `cache.advance` to the caller; a conditional model
        needs `genre_ids` (B,) here (checked by `forward`). A list passed as `all_hidden_states` receives the input
        of every layer and the final output.

        For one position and a fixed-shape cache this reads no Python value that changes from step to step, and
        its shapes change only when the cache shows more slots: `compile_decoding` compiles it (with dynamic
        shapes) once for a whole generation.
        """
        seq_length = input_ids.shape[2]
        token_ids = input_ids + self.codebook_offsets[None, :, None]
        hidden_states = self.embed_tokens(token_ids).sum(dim=1)
        if self.config.genres is not None:
            hidden_states = hidden_states + self.embed_genres(genre_ids)[:, None]
        rotary = None
        if self.config.position_embedding_type == "learned":
            hidden_states = hidden_states + self.embed_positions(positions)
        elif self.config.position_embedding_type == "rope":
            rotary = self.rotary_emb(positions, hidden_states.dtype)
        hidden_states = self.dropout(hidden_states)
        if cache is not None and cache.fixed_shape and seq_length == 1:
            attention_mask = cache.single_position_mask(positions, hidden_states.dtype)
        else:
            attention_mask = self.attention_mask(seq_length, cache, hidden_states)

        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, positions, rotary, attention_mask, cache
                )
            else:
                hidden_states = layer(hidden_states, positions, rotary, attention_mask, cache)
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


class MusicHybridForCausalLM(MusicHybridPreTrainedModel, GenerationMixin):
    """The backbone plus one linear head per codebook over the real codes (special ids are never predicted)."""

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
        log_mamba_path_once(config)

    def forward(
        self, input_ids, labels=None, genre_ids=None, cache=None, use_cache=None, logits_to_keep=0,
        output_hidden_states=None, return_dict=None, attention_mask=None, num_items_in_batch=None, **unused,
    ):
        """input_ids: (B, K, T) delayed codes starting with the start column; labels: the same layout with -100
        where nothing is predicted (see `codes_to_model_inputs`). genre_ids: (B,) int64 genre ids of a conditional
        model (`config.genre_id(name)`; None: the null genre). With `use_cache`, a new `MusicHybridCache` is made
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
        backbone = self.model(input_ids, cache, genre_ids, use_cache, output_hidden_states, attention_mask, **unused)
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
        return output if return_dict is not False else output.to_tuple()

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

    def codebook_logits(self, hidden_states):
        """(B, T, hidden) -> (B, K, T, codebook_size)."""
        batch, seq_length, _ = hidden_states.shape
        logits = self.lm_head(hidden_states).view(batch, seq_length, self.config.num_codebooks, -1)
        return logits.transpose(1, 2)

    @torch.no_grad()
    def generate(
        self, input_ids=None, generation_config=None, streamer=None, long_form=None, context_window=None, genre=None,
        **kwargs,
    ):
        """Sample codes, returned in natural layout (B * num_return_sequences, K, T + max_new_tokens) as int64.

        input_ids: None (unconditional) or prompt codes (B, K, T) in natural layout, ids in [0, codebook_size).
        Rows i*n ... (i+1)*n-1 continue prompt i (n = num_return_sequences), each an independent sample.
        genre (conditional models): None (the null genre), a name for every row, or a list of names (None entries
            allowed) with one per prompt or one per returned row.
        guidance_scale (conditional models, a generation-config field): g > 1 samples with classifier-free
            guidance, each codebook's logits null + g * (cond - null), from one batch holding every row twice
            (with its genre and with the null genre); None or 1: plain conditional sampling.
        temperature, top_k and top_p may be one value or a list of one value per codebook.
        streamer: an object with put(frames) and end(); put gets each new frame (B*n, K, 1) once all its codebooks
            are known.
        long_form: None (the whole sequence must fit the model's positions), "window" (when the positions run out,
            the last `context_window` frames are prefilled again as a new prompt, as in audiocraft; any model) or
            "sliding" (attention sees the last `context_window` positions while Mamba state carries on; models
            without learned positions).

        As in transformers, a passed `generation_config` is merged into the model's (the fields it leaves unset
        keep the model's values) and keyword arguments override both; `max_length` counts frames, the prompt's
        included; `return_dict_in_generate=True` returns a `GenerateDecoderOnlyOutput` holding `sequences`. Every
        setting this model does not implement (beam search, repetition penalties, end tokens, scores, ...) raises
        ValueError naming it (see `GENERATION_FIELDS_HONOURED`). Prompts of different lengths cannot share a batch
        (each would need its own delay-pattern alignment): generate them one at a time.
        """
        config, explicit = merged_generation_config(self.generation_config, generation_config, kwargs)
        prompt = prepare_prompt(input_ids, self.config, self.device)
        num_prompts = prompt.shape[0]
        prompt = prompt.repeat_interleave(config.num_return_sequences or 1, dim=0)
        if prompt.shape[0] == 0:
            raise ValueError("input_ids has an empty batch")
        condition = GenreCondition.for_generation(self.config, genre, config.guidance_scale, num_prompts, prompt)
        max_new_tokens = frames_to_generate(config, explicit, prompt.shape[2])
        sampler = CodebookSampler(config, self.config.num_codebooks)
        num_codebooks = self.config.num_codebooks
        position_limit = self.config.max_position_embeddings
        if long_form == "sliding":
            if self.config.position_embedding_type == "learned":
                raise ValueError('long_form="sliding" needs a model without learned positions; use long_form="window"')
            window = check_context_window(context_window)
            codes = self.generate_frames(prompt, max_new_tokens, sampler, streamer, condition, attention_window=window)
        elif long_form == "window":
            codes = self.generate_windowed(prompt, max_new_tokens, sampler, streamer, condition, context_window)
        elif long_form is None:
            needed = prompt.shape[2] + max_new_tokens + num_codebooks
            if self.config.position_embedding_type == "learned" and needed > position_limit:
                raise ValueError(
                    f"{prompt.shape[2]} prompt + {max_new_tokens} new frames need {needed} positions, more than this "
                    f"model's {position_limit}: shorten the request or pass long_form='window'"
                )
            codes = self.generate_frames(prompt, max_new_tokens, sampler, streamer, condition)
        else:
            raise ValueError(f"long_form must be None, 'window' or 'sliding', got {long_form!r}")
        if streamer is not None:
            streamer.end()
        return GenerateDecoderOnlyOutput(sequences=codes) if config.return_dict_in_generate else codes

    def generate_windowed(self, prompt, max_new_tokens, sampler, streamer, condition, context_window):
        """Windowed continuation: generate while the positions last, then restart from the last frames."""
        num_codebooks = self.config.num_codebooks
        frames_per_context = self.config.max_position_embeddings - num_codebooks
        window = check_context_window(context_window, frames_per_context)
        codes = prompt
        remaining = max_new_tokens
        while remaining:
            context = codes[:, :, -window:] if codes.shape[2] > window else codes
            step = min(remaining, frames_per_context - context.shape[2])
            new = self.generate_frames(context, step, sampler, streamer, condition)[:, :, context.shape[2] :]
            codes = torch.cat([codes, new], dim=2)
            remaining -= step
        return codes

    def compile_decoding(self, enabled=True, cuda_graph=False, **compile_options):
        """Run the decoding steps of later generate() calls through torch.compile (or back to eager with False).

        The compiled step is `MusicHybridModel.decode` on a fixed-shape cache (see `MusicHybridCache`): one graph
        serves every step of a generation. Compiling removes the per-step Python and dispatch work of the layer
        loop and fuses the elementwise ops. Shapes are dynamic by default, so the only compilations are one per
        kind of batch, whatever the lengths: 1, 2 or 3, and 4 or more (which multiply by packed weights on CPU,
        see `decoding_linear`); tens of seconds each on a 2-core CPU, cached on disk by inductor.
        `compile_options` go to torch.compile. On CPU inductor's wrapper code is C++ by default (options
        {"cpp_wrapper": True}): its Python wrapper spends more than a tenth of a step calling the some 80 products
        one by one; the C++ one compiles for about 20 s longer.
        cuda_graph: on a GPU, also record the step as a CUDA graph once per generation and replay it at every
        position (see `CUDAGraphStep`); ignored on CPU.
        """
        compile_options.setdefault("dynamic", True)
        if self.device.type == "cpu" and "backend" not in compile_options and "mode" not in compile_options:
            compile_options["options"] = {"cpp_wrapper": True, **compile_options.get("options", {})}
        self._compiled_decode = torch.compile(self.model.decode, **compile_options) if enabled else None
        self._decode_with_cuda_graph = enabled and cuda_graph
        self._compiled_thread_counts = set()  # see _note_compiling_again

    def _note_compiling_again(self, threads):
        """A compiled step is specialised to torch's thread count (inductor writes it into the CPU code), so the
        first generation on a count chosen at its start under load compiles the step again: say so, since that
        takes about as long as the first compilation (hybrid-116m int8: 32 s, against 43 s, on a cold cache)."""
        if self._compiled_thread_counts and threads not in self._compiled_thread_counts:
            logger.warning(
                f"the decoding step compiles again, for {threads} thread(s), which this generation's start found "
                "faster (see decoding_threads); once per thread count"
            )
        self._compiled_thread_counts.add(threads)

    def quantize_weights(self, mode="int8"):
        """Quantize the linear layers to int8 (one scale per output channel) for CPU decoding; returns the model.

        A decoding step reads every weight once, so a quarter of the bytes decodes up to 4x faster than float32.
        In place, for inference, on a float32 model on CPU (on GPUs, decode in bfloat16). The embedding tables
        stay float32 (a step reads one row of each). Each Mamba dt_proj, whose outputs set the decays exp(delta A)
        of the state, is quantized too: bench/int8_quality.py measured no difference (the largest codebook change
        of hybrid-small's validation CE 0.12% with it, 0.11% without), and as float32 it took 4% of a step. See
        `Int8Linear` for the product.
        """
        return quantize_linear_layers(self, mode)

    def generate_frames(self, prompt, max_new_tokens, sampler, streamer, condition, attention_window=None):
        """The decoding loop over delayed positions: prefill the prompt, then one position per step. The model
        runs on `condition.model_rows` of the sampled rows (each row twice under guidance)."""
        batch, num_codebooks, prompt_frames = prompt.shape
        total_frames = prompt_frames + max_new_tokens
        num_positions = total_frames + num_codebooks  # start column + delayed frames
        tokens = torch.cat(
            [prompt.new_full((batch, num_codebooks, 1), self.config.bos_token_id),
             apply_delay_pattern(F.pad(prompt, (0, max_new_tokens), value=self.config.pad_token_id), self.config.pad_token_id)],
            dim=2,
        )
        # Codebook k at position p holds frame p - 1 - k: sampled when that frame is new, kept from the
        # prompt (or pad) otherwise.
        frame_of = torch.arange(num_positions, device=prompt.device)[None, :] - 1 - torch.arange(num_codebooks, device=prompt.device)[:, None]
        sampled = (frame_of >= prompt_frames) & (frame_of < total_frames)

        compiled = self._compiled_decode
        model_rows, genre_ids = condition.num_model_rows(batch), condition.model_genre_ids
        cache = MusicHybridCache(
            self.config, model_rows, num_positions, prompt.device, self.dtype, attention_window=attention_window,
            fixed_shape=compiled is not None,
        )
        cache.packed_weights = pack_linear_weights(self, model_rows)
        decode = compiled or self.model.decode
        if compiled is not None and self._decode_with_cuda_graph and prompt.is_cuda:
            decode = CUDAGraphStep(compiled)
        prefill_length = prompt_frames + 1  # every codebook of these positions is known
        with decoding_threads(self, model_rows) as threads:  # chosen once: each step of a sample runs the same products
            if compiled is not None:
                self._note_compiling_again(threads)
            hidden = self.model(condition.model_rows(tokens[:, :, :prefill_length]), cache, genre_ids).last_hidden_state
            for position in range(prefill_length, num_positions):
                logits = decoding_linear(self.lm_head, hidden[:, -1], cache).view(model_rows, num_codebooks, -1)
                logits = condition.guided_logits(logits)
                tokens[:, :, position] = torch.where(sampled[:, position], sampler(logits), tokens[:, :, position])
                complete_frame = position - num_codebooks
                if streamer is not None and complete_frame >= prompt_frames:
                    streamer.put(undo_delay_pattern(tokens[:, :, position - num_codebooks + 1 : position + 1]))
                if position + 1 < num_positions:
                    positions = torch.full((1,), position, device=prompt.device)
                    # A contiguous copy: the same strides for every request length (a compiled step guards on
                    # them).
                    inputs = condition.model_rows(tokens[:, :, position : position + 1])
                    hidden = decode(inputs, positions, cache, genre_ids)
                    cache.advance(1)
        return undo_delay_pattern(tokens[:, :, 1:])


class GenreCondition:
    """The genres of a generation's rows and its guidance scale, and how the model runs them.

    Under guidance (g > 1) the model runs every row twice in one batch, first with its genre, then with the null
    genre, through one cache; each codebook's logits become null + g * (cond - null) before sampling. Otherwise
    it runs the rows once (with their genres, or unconditionally).
    """

    def __init__(self, genre_ids=None, guidance_scale=None, null_genre_id=None):
        self.guidance_scale = guidance_scale
        self.guided = guidance_scale is not None and guidance_scale != 1
        if self.guided:
            genre_ids = torch.cat([genre_ids, torch.full_like(genre_ids, null_genre_id)])
        self.model_genre_ids = genre_ids  # (model rows,) or None for an unconditional model

    @classmethod
    def for_generation(cls, config, genre, guidance_scale, num_prompts, prompt):
        """Check generate()'s genre and guidance_scale against the model; genres per row of `prompt` (num_prompts
        prompts repeated num_return_sequences times)."""
        if config.genres is None:
            if genre is not None:
                raise ValueError("genre= needs a genre-conditioned model; this model is unconditional (no genres)")
            if guidance_scale is not None:
                raise ValueError("guidance_scale needs a genre-conditioned model; this model is unconditional")
            return cls()
        rows = prompt.shape[0]
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
        genre_ids = torch.tensor([config.genre_id(name) for name in names], device=prompt.device)
        if guidance_scale is not None:
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
                math.isfinite(guidance_scale) and guidance_scale >= 1
            ):
                raise ValueError(f"guidance_scale must be a number >= 1 (1: no guidance), got {guidance_scale!r}")
            if all(name is None for name in names):
                raise ValueError("guidance_scale needs a genre to guide towards: pass genre=")
        return cls(genre_ids, guidance_scale, config.null_genre_id)

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


def default_generation_config(config):
    """MusicGen's sampling defaults: greedy decoding of codec tokens loops, so sample with top-k 250."""
    return GenerationConfig(
        do_sample=True,
        top_k=250,
        temperature=1.0,
        max_new_tokens=860,  # about 10 s of audio
        num_return_sequences=1,
        bos_token_id=config.bos_token_id,
        pad_token_id=config.pad_token_id,
    )


PER_CODEBOOK_SETTINGS = ("temperature", "top_k", "top_p")

# The GenerationConfig fields that generate() implements. Every other field must be unset (None) or hold its
# neutral value below (older transformers wrote those into saved configs), or generate() refuses it by name.
GENERATION_FIELDS_HONOURED = {
    "do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "max_length", "num_return_sequences",
    "guidance_scale", "return_dict_in_generate", "bos_token_id", "pad_token_id", "transformers_version",
    "_from_model_config",
}
GENERATION_NEUTRAL_VALUES = {
    "num_beams": 1, "num_beam_groups": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0, "typical_p": 1.0, "min_length": 0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "early_stopping": False, "use_cache": True, "output_scores": False, "output_logits": False,
    "output_attentions": False, "output_hidden_states": False, "remove_invalid_values": False,
    "renormalize_logits": False, "low_memory": False, "is_assistant": False, "disable_compile": False,
    "token_healing": False, "num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4, "assistant_lookbehind": 10, "target_lookbehind": 10,
}


def merged_generation_config(model_generation_config, passed, overrides):
    """The generation settings of one call and the names the caller set: the model's config, updated by the
    fields a passed GenerationConfig sets, then by keyword overrides (per-codebook lists kept aside from
    transformers' validation). Refuses keywords that are no setting and settings generate() does not implement."""
    config = copy.deepcopy(model_generation_config)
    explicit = set(overrides)
    if passed is not None:
        passed_fields = {k: v for k, v in passed.to_diff_dict().items() if k != "transformers_version"}
        config.update(**passed_fields)
        explicit |= set(passed_fields)
    per_codebook = {name: overrides.pop(name) for name in PER_CODEBOOK_SETTINGS if name in overrides}
    unused = config.update(**overrides)
    if unused:
        raise ValueError(f"generate() does not take {', '.join(sorted(unused))}")
    for name, value in per_codebook.items():
        setattr(config, name, value)
    refused = sorted(
        name for name, value in config.to_dict().items()
        if name not in GENERATION_FIELDS_HONOURED and value is not None and value != GENERATION_NEUTRAL_VALUES.get(name)
    )
    if refused:
        settings = ", ".join(f"{name}={getattr(config, name)!r}" for name in refused)
        raise ValueError(
            f"generate() does not implement {settings}: it samples every frame with the cache, no beams, penalties, "
            "end tokens or scores (the length is max_new_tokens or max_length frames)"
        )
    return config, explicit


def frames_to_generate(config, explicit, prompt_frames):
    """max_new_tokens, or max_length (frames, the prompt's included) when the caller set it instead."""
    if {"max_length", "max_new_tokens"} <= explicit:
        raise ValueError("pass max_new_tokens (new frames) or max_length (frames with the prompt), not both")
    if config.max_length is not None and ("max_length" in explicit or config.max_new_tokens is None):
        if not isinstance(config.max_length, int) or config.max_length <= prompt_frames:
            raise ValueError(
                f"max_length counts frames with the prompt's {prompt_frames}: it must be a larger number, got "
                f"{config.max_length!r}"
            )
        return config.max_length - prompt_frames
    if not isinstance(config.max_new_tokens, int) or config.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive number of frames, got {config.max_new_tokens!r}")
    return config.max_new_tokens


def prepare_prompt(input_ids, config, device):
    """Validate natural-layout prompt codes; None is an empty prompt of batch 1."""
    if input_ids is None:
        return torch.zeros((1, config.num_codebooks, 0), dtype=torch.long, device=device)
    if isinstance(input_ids, (list, tuple)) and all(torch.is_tensor(p) for p in input_ids):
        lengths = sorted({p.shape[-1] for p in input_ids})
        if len(lengths) > 1:
            raise ValueError(
                f"prompts of different lengths ({', '.join(map(str, lengths))} frames) cannot share a batch: "
                "generate each prompt on its own, or cut them to one length"
            )
        input_ids = torch.stack(list(input_ids)) if input_ids else torch.zeros(0, config.num_codebooks, 0)
    if not torch.is_tensor(input_ids):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 3 or input_ids.shape[1] != config.num_codebooks:
        raise ValueError(
            f"Prompt codes must have shape (batch, {config.num_codebooks}, frames), got {tuple(input_ids.shape)}"
        )
    if input_ids.is_floating_point():
        raise ValueError("Prompt codes must be integers")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= config.codebook_size):
        raise ValueError(f"Prompt codes must lie in [0, {config.codebook_size}) (natural layout, no special tokens)")
    return input_ids.to(device=device, dtype=torch.long)


def check_context_window(context_window, limit=None):
    """A window of frames, below `limit` when there is one (windowed continuation needs room for new frames)."""
    if not isinstance(context_window, int) or context_window <= 0 or (limit is not None and context_window >= limit):
        bound = "" if limit is None else f" below {limit}"
        raise ValueError(f"context_window must be a positive number of frames{bound}, got {context_window!r}")
    return context_window


class CodebookSampler:
    """Draws one code per codebook from logits (N, K, V), with per-codebook temperature / top-k / top-p.

    Built from transformers' public logits warpers; codebooks sharing settings are processed together.
    """

    def __init__(self, generation_config, num_codebooks):
        self.do_sample = bool(generation_config.do_sample)
        settings = [
            self.per_codebook(generation_config, name, num_codebooks) for name in PER_CODEBOOK_SETTINGS
        ]
        groups = {}
        for k, (temperature, top_k, top_p) in enumerate(zip(*settings)):
            groups.setdefault((temperature, top_k, top_p), []).append(k)
        self.groups = [(torch.tensor(ks), self.warpers(*key)) for key, ks in groups.items()]

    @staticmethod
    def per_codebook(generation_config, name, num_codebooks):
        value = getattr(generation_config, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * num_codebooks
        if len(values) != num_codebooks:
            raise ValueError(f"{name} needs one value or {num_codebooks} (one per codebook), got {len(values)}")
        return values

    @staticmethod
    def warpers(temperature, top_k, top_p):
        warpers = []
        if temperature is not None and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(temperature)))
        if top_k:
            warpers.append(UnsortedTopKWarper(int(top_k)))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(top_p)))
        return warpers

    def __call__(self, logits):
        if not self.do_sample:
            return logits.argmax(dim=-1)
        batch, num_codebooks, vocab = logits.shape
        scores = logits.float()
        if len(self.groups) == 1:
            scores = self.warp(scores.view(-1, vocab), self.groups[0][1]).view(batch, num_codebooks, vocab)
        else:
            scores = scores.clone()
            for codebooks, warpers in self.groups:
                codebooks = codebooks.to(scores.device)
                scores[:, codebooks] = self.warp(scores[:, codebooks].reshape(-1, vocab), warpers).view(batch, -1, vocab)
        # Gumbel-max: the argmax of scores plus Gumbel noise is a draw from softmax(scores). Uniform noise is much
        # cheaper on CPU than the exponential draws multinomial makes over the whole vocabulary.
        gumbel_noise = torch.rand_like(scores).log_().neg_().log_().neg_()
        return (scores + gumbel_noise).argmax(dim=-1)

    @staticmethod
    def warp(scores, warpers):
        for warper in warpers:
            scores = warper(None, scores)
        return scores


class UnsortedTopKWarper(TopKLogitsWarper):
    """TopKLogitsWarper's filter (keep the scores >= the k-th largest) found with an unsorted top-k, which is
    cheaper: only the k-th largest value is needed."""

    def __call__(self, input_ids, scores):
        top_k = min(self.top_k, scores.shape[-1])
        kth_largest = scores.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        return scores.masked_fill(scores < kth_largest, self.filter_value)


def refuse_unused_arguments(attention_mask, unused):
    """forward() takes transformers' usual arguments where it honours them and refuses the rest by name. Callers
    such as PEFT pass some as None or False (output_attentions, inputs_embeds), which ask for nothing.

    attention_mask: the model has no padding mask: a mask of all ones (no padding) is accepted and changes
    nothing. Short clips are padded with pad frames, whose labels are -100 (see `codes_to_model_inputs`)."""
    given = sorted(name for name, value in unused.items() if value is not None and value is not False)
    if given:
        raise ValueError(f"forward() does not take {', '.join(given)}")
    if attention_mask is not None and not bool(torch.all(attention_mask == 1)):
        raise ValueError(
            "attention_mask: this model takes no padding mask, only all ones; pad short clips with pad frames "
            "(labels -100), as codes_to_model_inputs does"
        )


def check_token_ids(ids, config, name, upper, allow_ignore=False):
    """Shape and range checks that turn user mistakes into ValueErrors instead of index errors deep inside."""
    if not torch.is_tensor(ids) or ids.dim() != 3 or ids.shape[1] != config.num_codebooks:
        shape = tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"{name} must have shape (batch, {config.num_codebooks}, positions), got {shape}")
    if ids.is_floating_point():
        raise ValueError(f"{name} must be integers")
    valid = ids.numel() == 0 or bool(((ids >= 0) & (ids < upper) | (allow_ignore & (ids == IGNORE_INDEX))).all())
    if not valid:
        ignore = " or -100" if allow_ignore else ""
        raise ValueError(f"{name} must lie in [0, {upper}){ignore}")


def check_genre_ids(genre_ids, config, batch, device):
    """(B,) int64 genre ids in [0, len(genres)] for a conditional model (None: the null genre for every row);
    None for an unconditional model, which refuses genre ids."""
    if config.genres is None:
        if genre_ids is not None:
            raise ValueError("genre_ids needs a genre-conditioned model; this model is unconditional (no genres)")
        return None
    if genre_ids is None:
        return torch.full((batch,), config.null_genre_id, dtype=torch.long, device=device)
    if not torch.is_tensor(genre_ids) or genre_ids.shape != (batch,) or genre_ids.is_floating_point():
        shape = tuple(genre_ids.shape) if torch.is_tensor(genre_ids) else type(genre_ids).__name__
        raise ValueError(f"genre_ids must be integers of shape ({batch},), one per row, got {shape}")
    if genre_ids.numel() and not bool(((genre_ids >= 0) & (genre_ids <= config.null_genre_id)).all()):
        raise ValueError(f"genre_ids must lie in [0, {config.null_genre_id}] ({config.null_genre_id}: the null genre)")
    return genre_ids.to(device=device, dtype=torch.long)


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
# Cache
# --------------------------------------------------------------------------------------------------------------------


# Steps on a fixed-shape cache see this many more slots at a time (see MusicHybridCache).
VISIBLE_BLOCK = 256


class MusicHybridCache:
    """Decoding state of every layer, allocated once for a whole generation.

    Attention layers keep keys and values for `max_length` positions, or a ring of the last `attention_window`
    positions in sliding-window mode. Mamba layers keep their last `d_conv` inputs and the SSM state (float32),
    whose size does not grow with the sequence. With memory caching they also keep their cached memories (float32;
    see `MemorySettings`): slots of states (batch, slots, d_inner, d_state), keys (batch, slots, d_state) and
    segment indices (slots,; -1 when empty), segment i in slot i % slots, and the sum of B over the current
    segment (batch, d_state). There are `mamba_memory_max_segments` slots, or enough for every segment of
    `max_length` positions.

    With `fixed_shape`, a single new position is written at its slot by index and attends over the "visible"
    slots under a mask (`single_position_mask`): the filled ones rounded up to a multiple of VISIBLE_BLOCK. Steps
    keep the same shapes for VISIBLE_BLOCK positions at a time, which a compiled step or a CUDA graph needs, and
    never read much more of a long cache than the filled part. Otherwise a step attends over the filled part
    exactly (cheapest in eager mode). Likewise a fixed-shape step reads every memory slot (the empty ones masked),
    an eager one only the filled slots.
    """

    def __init__(self, config, batch_size, max_length, device, dtype, attention_window=None, fixed_shape=False):
        self.length = 0
        self.attention_window = attention_window
        self.fixed_shape = fixed_shape
        self.capacity = max_length if attention_window is None else min(attention_window, max_length)
        # A fixed-shape cache keeps one slot spare, so the visible slots are always a strict part of the buffer:
        # views with the same stride pattern at every length (a compiled step guards on it).
        kv_shape = (batch_size, config.num_key_value_heads, self.capacity + fixed_shape, config.head_dim)
        self.keys, self.values, self.conv_states, self.ssm_states = {}, {}, {}, {}
        self.visible_keys, self.visible_values, self.visible_length = {}, {}, None
        self.mamba_decay_exponents = {}
        self.memories, self.memory_settings = {}, MemorySettings.from_config(config)
        if self.memory_settings is not None:
            segment_length = self.memory_settings.segment_length
            self.memory_slots = self.memory_settings.max_segments or max(1, max_length // segment_length)
        self.packed_weights = {}  # linear layer -> packed weight, for batched CPU decoding (see decoding_linear)
        for i, layer_type in enumerate(config.layer_types):
            if layer_type == ATTENTION:
                self.keys[i] = torch.zeros(kv_shape, dtype=dtype, device=device)
                self.values[i] = torch.zeros(kv_shape, dtype=dtype, device=device)
            else:
                d_inner = config.mamba_d_inner
                self.conv_states[i] = torch.zeros(batch_size, d_inner, config.mamba_d_conv, dtype=dtype, device=device)
                self.ssm_states[i] = torch.zeros(batch_size, d_inner, config.mamba_d_state, dtype=torch.float32, device=device)
                if self.memory_settings is not None:
                    self.memories[i] = self.empty_memory(config, batch_size, device)
        self.advance(0)

    def empty_memory(self, config, batch_size, device):
        d_state, slots = config.mamba_d_state, self.memory_slots
        return {
            "states": torch.zeros(batch_size, slots, config.mamba_d_inner, d_state, dtype=torch.float32, device=device),
            "keys": torch.zeros(batch_size, slots, d_state, dtype=torch.float32, device=device),
            "segments": torch.full((slots,), -1, dtype=torch.long, device=device),
            "key_sum": torch.zeros(batch_size, d_state, dtype=torch.float32, device=device),
        }

    def advance(self, num_positions):
        """Count new positions. A fixed-shape cache then shows attention the slots up to the next multiple of
        VISIBLE_BLOCK past the filled ones (all of them in a ring). The views are made anew every time (cheap):
        with gradients on, views taken before the buffers were last written would be stale for autograd."""
        self.length += num_positions
        if self.memories:
            filled = min(self.memory_slots, self.length // self.memory_settings.segment_length)
            self.memory_visible = self.memory_slots if self.fixed_shape else filled
            self.memory_filled = filled
        if self.fixed_shape:
            visible = self.visible_length = min(self.capacity, -(-(self.length + 1) // VISIBLE_BLOCK) * VISIBLE_BLOCK)
            self.visible_keys = {i: keys[:, :, :visible] for i, keys in self.keys.items()}
            self.visible_values = {i: values[:, :, :visible] for i, values in self.values.items()}

    def update_attention(self, layer_idx, key, value, positions):
        """Store the new keys/values (B, heads, T, head_dim) of `positions`; return those to attend over."""
        if self.fixed_shape and key.shape[2] == 1:
            keys, values = self.visible_keys[layer_idx], self.visible_values[layer_idx]
            slot = positions % self.capacity  # the position itself unless this is a ring; always visible
            keys.index_copy_(2, slot, key)
            values.index_copy_(2, slot, value)
            return keys, values
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        start, new, capacity = self.length, key.shape[2], self.capacity
        if self.attention_window is None:
            if start + new > capacity:
                raise ValueError(f"The cache holds {capacity} positions; {start + new} requested")
            keys[:, :, start : start + new] = key
            values[:, :, start : start + new] = value
            return keys[:, :, : start + new], values[:, :, : start + new]
        # Ring buffer: slot = position % capacity. Keys carry their positions (RoPE) and a single query attends
        # to all of them, so their order in the buffer does not matter.
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

    def cached_memory(self, layer_idx):
        """The filled memory slots of a Mamba layer (states, keys, segment indices) and its key sum."""
        memory, filled = self.memories[layer_idx], self.memory_filled
        return memory["states"][:, :filled], memory["keys"][:, :filled], memory["segments"][:filled], memory["key_sum"]

    def visible_memory(self, layer_idx):
        """The memory slots a decoding step reads: every slot in a fixed-shape cache, the filled ones otherwise."""
        memory, visible = self.memories[layer_idx], self.memory_visible
        return memory["states"][:, :visible], memory["keys"][:, :visible], memory["segments"][:visible]

    def store_memory(self, layer_idx, states, keys, segments, key_sum):
        """Cache the memories of the segments that ended in a multi-position input (see `memory_cached_scan`)."""
        memory, slots = self.memories[layer_idx], self.memory_slots
        if self.memory_settings.max_segments is None and len(segments) and segments[-1] >= slots:
            raise ValueError(f"The cache holds the memories of {slots} segments; segment {int(segments[-1])} ended")
        kept = slice(max(0, len(segments) - slots), None)  # a ring keeps the most recent
        slot = segments[kept] % slots
        memory["states"].index_copy_(1, slot, states[:, kept].detach())
        memory["keys"].index_copy_(1, slot, keys[:, kept].detach())
        memory["segments"].index_copy_(0, slot, segments[kept])
        memory["key_sum"].copy_(key_sum.detach())

    def recurrent_states(self):
        """Every tensor that a decoding step updates in place besides the attention slots it writes."""
        memories = [tensor for memory in self.memories.values() for tensor in memory.values()]
        return [*self.conv_states.values(), *self.ssm_states.values(), *memories]

    def single_position_mask(self, positions, dtype):
        """Additive mask (1, 1, 1, visible slots) of one query at `positions` (one element) in a fixed-shape cache:
        slot j holds a position up to the query's once j <= the query's position, in a plain buffer and a ring
        alike; later slots are empty. (The size comes from a view's shape, which a compiled step keeps symbolic.)"""
        if not self.visible_keys:
            return None
        visible = next(iter(self.visible_keys.values())).shape[2]
        empty = torch.arange(visible, device=positions.device) > positions
        return torch.zeros(visible, dtype=dtype, device=positions.device).masked_fill(
            empty, torch.finfo(dtype).min
        )[None, None, None]

    def decay_exponents(self, layer_idx, A_log):
        """A log2(e) = -exp(A_log) log2(e) of a Mamba layer, computed once (at prefill) per cache: the weights do
        not change during a generation, and this saves two passes over (d_inner, d_state) per layer and step."""
        exponents = self.mamba_decay_exponents.get(layer_idx)
        if exponents is None:
            exponents = self.mamba_decay_exponents[layer_idx] = decay_exponents(A_log)
        return exponents

    def per_frame_bytes(self):
        """Bytes added per generated position: attention K/V, and the cached memories per position (a state and
        a key every segment) unless `mamba_memory_max_segments` bounds them; the Mamba state is constant."""
        attention = sum(2 * k[0, :, 0].numel() * k.shape[0] * k.element_size() for k in self.keys.values())
        if not self.memories or self.memory_settings.max_segments is not None:
            return attention
        per_segment = sum(m["states"][:, 0].nbytes + m["keys"][:, 0].nbytes for m in self.memories.values())
        return attention + per_segment / self.memory_settings.segment_length


# --------------------------------------------------------------------------------------------------------------------
# Decoder layer, attention, MLP, norm, positions
# --------------------------------------------------------------------------------------------------------------------


class MusicHybridDecoderLayer(nn.Module):
    """Pre-norm residual block: a mixer (attention or Mamba-1), then an MLP (attention layers always,
    Mamba layers when `config.mamba_mlp`)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if self.layer_type == ATTENTION:
            self.mixer = MusicHybridAttention(config, layer_idx)
        else:
            self.mixer = MambaMixer(config, layer_idx)
        self.has_mlp = self.layer_type == ATTENTION or config.mamba_mlp
        if self.has_mlp:
            self.post_mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, positions, rotary, attention_mask, cache):
        if self.layer_type == ATTENTION:
            mixed = self.mixer(self.input_norm(hidden_states), positions, rotary, attention_mask, cache)
        else:
            mixed = self.mixer(self.input_norm(hidden_states), cache, positions)
        hidden_states = hidden_states + self.dropout(mixed)
        if self.has_mlp:
            hidden_states = hidden_states + self.dropout(self.mlp(self.post_mixer_norm(hidden_states), cache))
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
    attention interface (sdpa by default, eager fallback, flash when installed)."""

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

    def forward(self, hidden_states, positions, rotary, attention_mask, cache):
        batch, seq_length, _ = hidden_states.shape
        query, key, value = (
            decoding_linear(projection, hidden_states, cache).view(batch, seq_length, -1, self.head_dim).transpose(1, 2)
            for projection in (self.q_proj, self.k_proj, self.v_proj)
        )
        if rotary is not None:
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        if cache is not None:
            key, value = cache.update_attention(self.layer_idx, key, value, positions)
        # Plain indexing, which torch.compile traces on every supported torch (older dynamo breaks the graph inside
        # get_interface's Mapping methods).
        implementation = self.config._attn_implementation
        one_query_compiled_on_cpu = seq_length == 1 and query.device.type == "cpu" and torch.compiler.is_compiling()
        if implementation == "sdpa" and one_query_compiled_on_cpu:
            # inductor fuses the plain attention's scale, mask and softmax between two products, which beats sdpa's
            # CPU kernel for one query (about 0.2 ms of an 8.5 ms int8 hybrid-116m step)
            implementation = "eager"
        attention = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        output, _ = attention(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling,
        )
        return decoding_linear(self.o_proj, output.reshape(batch, seq_length, -1), cache)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, hidden_states, cache=None):
        return decoding_linear(self.fc_out, self.act(decoding_linear(self.fc_in, hidden_states, cache)), cache)


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
# Mamba-1 mixer
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def mamba_kernels():
    """The mamba-ssm / causal-conv1d CUDA kernels as a dict, or None when they do not import."""
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except ImportError:
        return None
    return {
        "causal_conv1d_fn": causal_conv1d_fn,
        "causal_conv1d_update": causal_conv1d_update,
        "mamba_inner_fn": mamba_inner_fn,
        "selective_scan_fn": selective_scan_fn,
        "selective_state_update": selective_state_update,
    }


def log_mamba_path_once(config):
    if MAMBA not in config.layer_types:
        return
    if config.mamba_memory:
        logger.info_once(
            "Mamba layers with memory caching run the PyTorch chunked selective scan on every device (the mamba-ssm "
            "kernels return no segment-end states)"
        )
        return
    if mamba_kernels() is not None and torch.cuda.is_available():
        logger.info_once("Mamba layers run the mamba-ssm / causal-conv1d CUDA kernels on CUDA tensors")
    else:
        logger.info_once(
            "Mamba layers run the PyTorch chunked selective scan (mamba-ssm and causal-conv1d kernels need CUDA: "
            "pip install 'music-hybrid[cuda]')"
        )


class MambaMixer(nn.Module):
    """The Mamba-1 selective SSM mixer, with mamba_ssm's `Mamba` parameter names, shapes and initialisation.

    Three ways to run: the fused CUDA kernels (training), the kernels with a cache (prefill and per-step
    decoding), and the PyTorch path (any device). `mamba_implementation` in the config picks: "auto" uses the
    kernels on CUDA tensors when they import, "kernels" insists, "torch" never uses them, and "compiled" runs the
    PyTorch scan in chunks fused by torch.compile.
    """

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_inner = config.mamba_d_inner
        self.d_state = config.mamba_d_state
        self.d_conv = config.mamba_d_conv
        self.dt_rank = config.mamba_dt_rank_value
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.d_inner, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
            padding=self.d_conv - 1, bias=config.mamba_conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.mamba_proj_bias)
        self.memory = MemorySettings.from_config(config)
        if self.memory is not None:  # the query W_u x_t that scores the cached memories (see MemorySettings)
            self.memory_query = nn.Linear(self.d_inner, self.d_state, bias=False)

    def reset_ssm_parameters(self):
        """mamba_ssm's initialisation: S4D-real A, D = 1, dt bias = softplus^-1 of a log-uniform draw."""
        config = self.config
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)
        dt_init_std = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        log_min, log_max = math.log(config.mamba_dt_min), math.log(config.mamba_dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_max - log_min) + log_min).clamp(min=config.mamba_dt_init_floor)
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))
        init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            init.zeros_(self.conv1d.bias)

    def use_kernels(self, hidden_states):
        choice = self.config.mamba_implementation
        if choice in ("torch", "compiled") or self.memory is not None:  # the kernels keep no segment-end states
            return False
        if choice == "kernels":
            if mamba_kernels() is None:
                raise ImportError("mamba_implementation='kernels' needs mamba-ssm and causal-conv1d installed")
            return True
        return hidden_states.is_cuda and mamba_kernels() is not None

    def forward(self, hidden_states, cache=None, positions=None):
        """hidden_states (B, T, hidden) -> (B, T, hidden); with a cache, continue from and update its state.
        `positions` (a tensor) is needed by a decoding step with memory caching."""
        # One position with a cache is a decoding step, also on an empty cache (zero state = zero padding). The
        # checks never read cache.length for one position: a compiled step must not depend on it.
        single_step = cache is not None and hidden_states.shape[1] == 1
        if self.use_kernels(hidden_states):
            if cache is None and self.fused_kernel_sees_every_layer():
                return self.kernel_fused_forward(hidden_states)
            if cache is None or single_step or cache.length == 0:
                return self.kernel_forward(hidden_states, cache)
        if single_step:
            return self.torch_step(hidden_states, cache, positions)
        return self.torch_forward(hidden_states, cache)

    def ssm_inputs(self, x):
        """x (B, d_inner, T) after the conv -> dt (B, d_inner, T) before the softplus, B and C (B, d_state, T).

        dt_proj is called as a module, bias included, so that an adapter or hook on it takes part."""
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self.dt_proj(dt).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def torch_forward(self, hidden_states, cache):
        # Time-major (B, T, d_inner) throughout: the layout in_proj produces and the scan works in, so no
        # transposing copies are made (they cost as much as the conv itself).
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = F.silu(self.causal_conv(x, cache))
        initial_state = None
        if cache is not None:
            initial_state = cache.ssm_states[self.layer_idx] if cache.length else None
            cache.decay_exponents(self.layer_idx, self.A_log)  # ready before decoding (one compiled step graph)
        dt, B, C = self.ssm_inputs(x.transpose(1, 2))
        delta = F.softplus(dt)
        A = -torch.exp(self.A_log.float())
        compiled = self.config.mamba_implementation == "compiled"
        if self.memory is None:
            y, last_state = selective_scan(x.transpose(1, 2), delta, A, B, C, initial_state, compiled=compiled)
            y = y.transpose(1, 2)
        else:
            cached = None if cache is None else cache.cached_memory(self.layer_idx)
            y, last_state, new_memory = memory_cached_scan(
                x.transpose(1, 2), delta, A, B, C, self.memory_query(x), initial_state,
                start=0 if cache is None else cache.length, settings=self.memory, cached=cached, compiled=compiled,
            )
            if cache is not None:
                cache.store_memory(self.layer_idx, *new_memory)
        if cache is not None:
            cache.ssm_states[self.layer_idx].copy_(last_state)
        y = y.to(x.dtype) + x * self.D.to(x.dtype)
        return self.out_proj(y * F.silu(z))

    def causal_conv(self, x, cache):
        """The depthwise causal conv of time-major x (B, T, d_inner) as d_conv shifted multiply-adds. With a
        cache it continues from the cached inputs (zeros at the start, the same as zero padding) and stores the
        last d_conv inputs."""
        seq_length = x.shape[1]
        if cache is None:
            history = x.new_zeros(x.shape[0], self.d_conv - 1, x.shape[2])
        else:
            history = cache.conv_states[self.layer_idx][..., 1:].transpose(1, 2).to(x.dtype)
        x_padded = torch.cat([history, x], dim=1)
        if cache is not None:
            cache.conv_states[self.layer_idx].copy_(x_padded[:, -self.d_conv :].transpose(1, 2))
        weight = self.conv1d.weight[:, 0]
        out = x_padded[:, :seq_length] * weight[:, 0]
        for shift in range(1, self.d_conv):
            out = torch.addcmul(out, x_padded[:, shift : shift + seq_length], weight[:, shift])
        return out if self.conv1d.bias is None else out + self.conv1d.bias

    def torch_step(self, hidden_states, cache, positions=None):
        """One decoding step (B, 1, hidden) in PyTorch: the conv and the SSM state advance by one input in place,
        with no per-step work beyond the step itself (no conv call over a padded window, no scan setup). With
        memory caching, the step at `positions` (one element) also reads and updates the cached memories."""
        conv_state, ssm_state = cache.conv_states[self.layer_idx], cache.ssm_states[self.layer_idx]
        x, z = decoding_linear(self.in_proj, hidden_states[:, 0], cache).chunk(2, dim=-1)
        conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1))
        x = torch.sum(conv_state * self.conv1d.weight[:, 0], dim=-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        x_dbl = decoding_linear(self.x_proj, x, cache)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(decoding_linear(self.dt_proj, dt, cache))
        exponents = cache.decay_exponents(self.layer_idx, self.A_log)
        y = selective_state_step(ssm_state, x, delta, exponents, B, C)
        if self.memory is not None:
            query = decoding_linear(self.memory_query, x, cache)
            y = memory_step(cache, self.layer_idx, self.memory, y, ssm_state, query, B, C, positions)
        y = (y.to(x.dtype) + x * self.D.to(x.dtype)) * F.silu(z)
        return decoding_linear(self.out_proj, y, cache)[:, None]

    def fused_kernel_sees_every_layer(self):
        """mamba_inner_fn takes the raw weights of conv1d, x_proj, dt_proj and out_proj: only when each is a plain
        layer does that equal calling it (a PEFT adapter, hook or quantized weight would be bypassed)."""
        return is_plain_layer(self.conv1d, nn.Conv1d) and all(
            is_plain_layer(layer) for layer in (self.x_proj, self.dt_proj, self.out_proj)
        )

    def kernel_fused_forward(self, hidden_states):
        """Training path: one fused kernel for conv, projections, scan and gate (as mamba_ssm's Mamba)."""
        kernels = mamba_kernels()
        xz = self.in_proj(hidden_states).transpose(1, 2)
        return kernels["mamba_inner_fn"](
            xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.out_proj.weight, self.out_proj.bias, -torch.exp(self.A_log.float()), None, None,
            self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )

    def kernel_forward(self, hidden_states, cache=None):
        """The unfused kernels, the projections called as modules: a whole sequence without a cache (training
        with wrapped projections), the prefill of an empty cache (causal_conv1d_fn + selective_scan_fn) or one
        decoding step (causal_conv1d_update + selective_state_update), updating the cache in place."""
        kernels = mamba_kernels()
        conv_weight = self.conv1d.weight.view(self.d_inner, self.d_conv)
        A = -torch.exp(self.A_log.float())
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        if cache is not None and hidden_states.shape[1] == 1:
            conv_state, ssm_state = cache.conv_states[self.layer_idx], cache.ssm_states[self.layer_idx]
            x = kernels["causal_conv1d_update"](x[..., 0], conv_state, conv_weight, self.conv1d.bias, "silu")
            dt, B, C = self.ssm_inputs(x[..., None])
            y = kernels["selective_state_update"](
                ssm_state, x, dt[..., 0], A, B[..., 0], C[..., 0], self.D.float(), z=z[..., 0], dt_softplus=True
            )
            return self.out_proj(y[:, None])
        if cache is not None:
            cache.conv_states[self.layer_idx].copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = kernels["causal_conv1d_fn"](x.contiguous(), conv_weight, self.conv1d.bias, activation="silu")
        dt, B, C = self.ssm_inputs(x)
        y, last_state = kernels["selective_scan_fn"](
            x, dt.contiguous(), A, B.contiguous(), C.contiguous(), self.D.float(), z=z.contiguous(),
            delta_softplus=True, return_last_state=True,
        )
        if cache is not None:
            cache.ssm_states[self.layer_idx].copy_(last_state)
        return self.out_proj(y.transpose(1, 2))


# --------------------------------------------------------------------------------------------------------------------
# Memory caching (Behrouz et al. 2026, "Memory Caching: RNNs with Growing Memory")
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySettings:
    """Memory caching of a Mamba layer. The sequence is cut into segments of `segment_length` positions; the SSM
    state h^(i) right after segment i is cached with the key k^(i) = mean of B over segment i. Position t of
    segment s reads the live memory (r = C_t . h_t, key: mean of B over segment s up to t) and the cached ones
    (r^(i) = C_t . h^(i), i < s; the `max_segments` most recent when set): y_t = sum_j g_t^(j) r_t^(j) + D x_t,
    with g from the scores <W_u x_t, k^(j)> / sqrt(d_state) by `aggregation` (see `memory_weights`). The readout
    is linear in the state, so reading n cached states is one matrix product (see `read_memories`)."""

    segment_length: int
    aggregation: str
    top_k: int
    max_segments: int | None

    @classmethod
    def from_config(cls, config):
        if not config.mamba_memory:
            return None
        return cls(
            config.mamba_memory_segment_length, config.mamba_memory_aggregation, config.mamba_memory_top_k,
            config.mamba_memory_max_segments,
        )

    def valid(self, memory_segments, position_segments):
        """Which cached segments (n,) the positions' segments (..., 1) read: (..., n). Empty slots hold -1."""
        valid = (memory_segments >= 0) & (memory_segments < position_segments)
        if self.max_segments is not None:
            valid &= memory_segments >= position_segments - self.max_segments
        return valid


def memory_cached_scan(u, delta, A, B, C, query, initial_state, start, settings, cached=None, compiled=False):
    """The Mamba-1 scan with memory caching over inputs at positions start, start + 1, ... (see `MemorySettings`).

    u, delta (batch, d_inner, T), A, B, C and initial_state as in `selective_scan`; query = W_u x (batch, T,
    d_state). cached: the memories of earlier positions, (states (batch, n, d_inner, d_state), keys (batch, n,
    d_state), segment indices (n,), the sum of B over the current segment before `start`), or None. Returns y
    (batch, T, d_inner) in float32 (before the D x term), the last state and the new memories (the same four
    fields, for the segments that end inside the inputs, and the key sum after them).
    """
    segment_length, length = settings.segment_length, u.shape[-1]
    y_live, last_state, segment_states = selective_scan(
        u, delta, A, B, C, initial_state, compiled=compiled, offset=start, segment_length=segment_length
    )
    device = u.device
    steps = torch.arange(length, device=device)
    segments = (start + steps) // segment_length
    in_segment = (start + steps) % segment_length
    # The live key: the running mean of B over the current segment (a cumulative sum restarted at segment starts,
    # continued from the cached sum when the first segment began before the inputs).
    B = B.float().transpose(1, 2)
    cumulative = F.pad(B.cumsum(1), (0, 0, 1, 0))
    running_sums = cumulative[:, 1:] - cumulative[:, (steps - in_segment).clamp(min=0)]
    if cached is not None:
        running_sums = running_sums + cached[3][:, None] * (steps < in_segment)[None, :, None]
    live_keys = running_sums / (in_segment + 1)[None, :, None]
    ends = torch.nonzero(in_segment == segment_length - 1)[:, 0]
    new_memory = (segment_states.transpose(0, 1), live_keys[:, ends], segments[ends], running_sums[:, -1])
    states, keys, memory_segments = new_memory[:3]
    if cached is not None:
        states, keys = torch.cat([cached[0], states], dim=1), torch.cat([cached[1], keys], dim=1)
        memory_segments = torch.cat([cached[2], memory_segments])
    scale = query.shape[-1] ** -0.5  # 1 / sqrt(d_state)
    query = query.float()
    live_scores = (query * live_keys).sum(-1) * scale
    scores = torch.matmul(query, keys.transpose(1, 2)) * scale
    valid = settings.valid(memory_segments, segments[:, None])
    live_weights, weights = memory_weights(live_scores, scores, valid, settings)
    y = live_weights[..., None] * y_live.transpose(1, 2) + read_memories(weights, C.float().transpose(1, 2), states)
    return y, last_state, new_memory


def memory_weights(live_scores, scores, valid, settings):
    """The weights g of the live memory (...) and the cached ones (..., n), zero where not `valid`.

    "gated": softmax over the live and valid cached scores; "residual": every weight 1; "sparse": softmax over the
    live score and the `top_k` highest valid cached scores.
    """
    if settings.aggregation == "residual":
        return torch.ones_like(live_scores), valid.to(scores.dtype).expand_as(scores)
    if settings.aggregation == "sparse" and scores.shape[-1] > settings.top_k:
        masked = scores.masked_fill(~valid, -math.inf)
        top = masked.topk(settings.top_k, dim=-1).indices
        valid = torch.zeros_like(masked, dtype=torch.bool).scatter_(-1, top, True) & valid
    weights = torch.softmax(torch.cat([live_scores[..., None], scores.masked_fill(~valid, -math.inf)], dim=-1), dim=-1)
    return weights[..., 0], weights[..., 1:]


def read_memories(weights, C, states):
    """sum_i weights_ti (C_t . h^(i)) = sum_(i,n) (weights_ti C_tn) h^(i)_n: one product of (batch, T, n d_state)
    by (batch, n d_state, d_inner), never the (batch, T, n, d_inner) readouts themselves.
    weights (batch, T, n), C (batch, T, d_state), states (batch, n, d_inner, d_state) -> (batch, T, d_inner)."""
    batch, length, num_memories = weights.shape
    if num_memories == 0:
        return C.new_zeros(batch, length, states.shape[2])
    mixed_queries = (weights[..., None] * C[:, :, None, :]).reshape(batch, length, -1)
    return torch.matmul(mixed_queries, states.transpose(2, 3).reshape(batch, -1, states.shape[2]))


def memory_step(cache, layer_idx, settings, y_live, state, query, B, C, positions):
    """One decoding step of memory caching: y_live = C . h_t (batch, d_inner) of the new state `state`; B, C,
    query (batch, d_state); positions: the step's position (one element, a tensor: a compiled step reads no
    Python value that changes). Reads the cached memories, then updates the key sum and, at a segment's last
    position, caches the state and key in their slot. Returns y (batch, d_inner) before the D x term."""
    memory = cache.memories[layer_idx]
    segment_length = settings.segment_length
    segment, in_segment = positions // segment_length, positions % segment_length
    B, C, query = B.float(), C.float(), query.float()
    key_sum = torch.where(in_segment == 0, B, memory["key_sum"] + B)
    memory["key_sum"].copy_(key_sum)
    live_key = key_sum / (in_segment + 1)
    states, keys, memory_segments = cache.visible_memory(layer_idx)
    scale = query.shape[-1] ** -0.5  # 1 / sqrt(d_state)
    live_scores = (query * live_key).sum(-1) * scale
    scores = torch.matmul(keys, query[:, :, None])[..., 0] * scale
    live_weights, weights = memory_weights(live_scores, scores, settings.valid(memory_segments, segment), settings)
    y = live_weights[:, None] * y_live + read_memories(weights[:, None], C[:, None], states)[:, 0]
    # Written by index whatever the position (a fixed-shape step): the slot's old content unless a segment ends.
    segment_ends = in_segment == segment_length - 1
    slot = segment % memory["segments"].shape[0]
    for buffer, new, dim in ((memory["states"], state[:, None], 1), (memory["keys"], live_key[:, None], 1),
                             (memory["segments"], segment, 0)):
        buffer.index_copy_(dim, slot, torch.where(segment_ends, new, buffer.index_select(dim, slot)))
    return y


# --------------------------------------------------------------------------------------------------------------------
# Selective scan in PyTorch
# --------------------------------------------------------------------------------------------------------------------

# exp(x) = exp2(x log2(e)): on CPU exp2 costs about a third of exp, and the decays exp(delta A) are most of the
# scan's arithmetic (one per time step, channel and state).
LOG2_E = 1.4426950408889634


def decay_exponents(A_log):
    """A log2(e) = -exp(A_log) log2(e): the decays are exp2(delta A log2(e)) (see `LOG2_E`)."""
    return -torch.exp(A_log.float()) * LOG2_E


def selective_scan(
    u, delta, A, B, C, initial_state=None, chunk_size=16, compiled=False, offset=0, segment_length=None
):
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = <h_t, C_t>, in float32.

    u, delta: (batch, d_inner, T); A: (d_inner, d_state); B, C: (batch, d_state, T); initial_state: (batch,
    d_inner, d_state) or None. Returns y (batch, d_inner, T) and the last state.

    The scan runs time-major, `chunk_size` steps at a time, in two reused (chunk, batch, d_inner, d_state)
    buffers (decays and states), so memory is bounded by the chunk and the working set stays in cache; the
    (T, batch, d_inner, d_state) states never exist at once. For training it keeps only each chunk's start
    state; the backward pass recomputes a chunk from it and runs the adjoint recurrence in reverse.

    compiled: run every whole chunk, forward and backward, as one kernel that torch.compile fuses (see
    `fused_chunk_forward`); the same results to float32 rounding, about twice as fast on CPU, compiled on first
    use (seconds; needs a C++ compiler on CPU).

    segment_length (a multiple of chunk_size; memory caching): the inputs start at position `offset` of a
    sequence cut into segments of that length; the chunks follow the same grid (a shorter first chunk when
    `offset` is not on it), so every segment ends at a chunk's end. Then a third output holds the states right
    after each segment end inside the inputs, (segments, batch, d_inner, d_state), and gradients flow from them
    back through the scan.
    """
    if initial_state is None:
        initial_state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
    inputs = (u, delta, A, B, C, initial_state)
    grid = ScanGrid(u.shape[-1], chunk_size, offset, segment_length)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, last_state, segment_states = SelectiveScan.apply(*inputs, grid, compiled)
    else:
        with torch.autocast(u.device.type, enabled=False):
            y, last_state, segment_states, _ = scan_forward(*inputs, grid, compiled, keep_start_states=False)
    return (y, last_state) if segment_length is None else (y, last_state, segment_states)


class ScanGrid:
    """Where the scan's chunks start, and which chunk ends are segment ends (see `selective_scan`)."""

    def __init__(self, length, chunk_size, offset=0, segment_length=None):
        if segment_length is not None and segment_length % chunk_size:
            raise ValueError(f"segment_length {segment_length} is not a multiple of the chunk size {chunk_size}")
        self.chunk_size = chunk_size
        first = (-offset) % chunk_size or chunk_size
        self.starts = [0] + list(range(first, length, chunk_size)) if length else []
        self.ends = self.starts[1:] + [length]
        # Indices of the chunks that end a segment, in order.
        self.segment_chunks = [] if segment_length is None else [
            i for i, end in enumerate(self.ends) if (offset + end) % segment_length == 0
        ]

    def spans(self):
        return [slice(start, end) for start, end in zip(self.starts, self.ends, strict=True)]


class SelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward pass (autograd through the chunk loop is slower than a
    plain loop and keeps every state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, initial_state, grid, compiled):
        with torch.autocast(u.device.type, enabled=False):
            y, last_state, segment_states, saved = scan_forward(
                u, delta, A, B, C, initial_state, grid, compiled, keep_start_states=True
            )
        ctx.save_for_backward(*saved)
        ctx.grid, ctx.compiled = grid, compiled
        return y, last_state, segment_states

    @staticmethod
    def backward(ctx, grad_y, grad_last_state, grad_segment_states):
        with torch.autocast(grad_y.device.type, enabled=False):
            gradients = scan_backward(
                *ctx.saved_tensors, grad_y, grad_last_state, grad_segment_states, ctx.grid, ctx.compiled
            )
        return gradients + (None, None)


def scan_forward(u, delta, A, B, C, initial_state, grid, compiled, keep_start_states):
    """y (batch, d_inner, T), the last state, the segment-end states and, for the backward pass, the time-major
    inputs and chunk starts."""
    u, delta, B, C = (time_major(t) for t in (u, delta, B, C))
    A = A.float()
    exponents = A * LOG2_E
    chunk_size = grid.chunk_size
    y = torch.empty_like(u)
    decay, states = scan_buffers(initial_state, chunk_size)
    spans = grid.spans()
    start_states = u.new_empty((len(spans) if keep_start_states else 0,) + tuple(initial_state.shape))
    segment_states = u.new_empty((len(grid.segment_chunks),) + tuple(initial_state.shape))
    segment_ends = iter(enumerate(grid.segment_chunks))
    next_segment = next(segment_ends, None)
    state = initial_state.float()
    for i, span in enumerate(spans):
        if keep_start_states:
            start_states[i] = state
        if compiled and u[span].shape[0] == chunk_size:  # a shorter chunk would compile again
            y[span], state = compiled_chunk_function(fused_chunk_forward)(
                state, u[span], delta[span], exponents, B[span], C[span]
            )
        else:
            _, h = chunk_states(state, u[span], delta[span], exponents, B[span], decay, states)
            y[span] = sum_over_state(h[1:], C[span])
            state = h[-1]
        if next_segment is not None and next_segment[1] == i:
            segment_states[next_segment[0]] = state
            next_segment = next(segment_ends, None)
    return y.permute(1, 2, 0), state.clone(), segment_states, (u, delta, A, B, C, start_states)


def scan_backward(u, delta, A, B, C, start_states, grad_y, grad_last_state, grad_segment_states, grid, compiled):
    """Gradients of (u, delta, A, B, C, initial_state), chunk by chunk from the end (see `chunk_gradients`); a
    segment-end state's gradient joins the gradient flowing into the end of its chunk."""
    grad_y = time_major(grad_y)
    grad_u, grad_delta, grad_B, grad_C = (torch.empty_like(t) for t in (u, delta, B, C))
    grad_A = torch.zeros_like(A)
    exponents = A * LOG2_E
    decay, states = scan_buffers(start_states[0], grid.chunk_size)
    grad_states = torch.empty_like(decay)
    segment_of_chunk = {} if grad_segment_states is None else {i: j for j, i in enumerate(grid.segment_chunks)}
    # decay_{t+1} g_{t+1} for the first step after the current chunk.
    future = torch.zeros_like(start_states[0]) if grad_last_state is None else grad_last_state.float()
    spans = grid.spans()
    for i in reversed(range(len(spans))):
        span = spans[i]
        if i in segment_of_chunk:
            future = future + grad_segment_states[segment_of_chunk[i]].float()
        chunk = (start_states[i], u[span], delta[span], A, exponents, B[span], C[span], grad_y[span], future)
        if compiled and u[span].shape[0] == grid.chunk_size:
            gradients = compiled_chunk_function(fused_chunk_backward)(*chunk)
        else:
            gradients = chunk_gradients(*chunk, decay, states, grad_states)
        grad_u[span], grad_delta[span], grad_chunk_A, grad_B[span], grad_C[span], future = gradients
        grad_A += grad_chunk_A
    grad_u, grad_delta, grad_B, grad_C = (t.permute(1, 2, 0) for t in (grad_u, grad_delta, grad_B, grad_C))
    return grad_u, grad_delta, grad_A, grad_B, grad_C, future


def chunk_gradients(start_state, u, delta, A, exponents, B, C, grad_y, future, decay, states, grad_states):
    """The backward pass of one time-major chunk: gradients of its u, delta, A, B, C, and decay_0 g_0 for the
    chunk before it. `future` is decay_{q} g_{q}, from the chunk after it (or the last state's gradient). The
    last three arguments are the reused buffers (see `scan_buffers`).

    g_t = dL/dh_t = C_t grad_y_t + decay_{t+1} g_{t+1}; then, with h_t = decay_t h_{t-1} + delta_t u_t B_t,
    the input term gives u, delta and B their gradients and the decay term d(delta_t A) = g_t h_{t-1} decay_t.
    """
    a, h = chunk_states(start_state, u, delta, exponents, B, decay, states)
    g = torch.mul(grad_y[..., None], C[:, :, None, :], out=grad_states[: a.shape[0]])
    grad_C = sum_over_channels(h[1:], grad_y)
    g[-1] += future
    for t in range(g.shape[0] - 2, -1, -1):
        g[t].addcmul_(a[t + 1], g[t + 1])
    future = a[0] * g[0]
    grad_input = sum_over_state(g, B)
    grad_B = sum_over_channels(g, delta * u)
    grad_exponent = a.mul_(h[:-1]).mul_(g)  # the decay buffer is free once `future` is taken
    grad_delta = grad_input * u + torch.mul(grad_exponent, A, out=g).sum(-1)
    grad_A = grad_exponent.mul_(delta[..., None]).sum((0, 1))
    return grad_input * delta, grad_delta, grad_A, grad_B, grad_C, future


# The fused chunk functions: the same recurrence written one step at a time, for torch.compile, which fuses a
# whole chunk into one kernel that keeps the states in cache (run eagerly, their per-step ops would cost far more
# than `chunk_states` and `chunk_gradients`, which batch each op over the chunk).


def fused_chunk_forward(state, u, delta, exponents, B, C):
    """One time-major chunk from `state`: y (q, batch, d_inner) and the state after it."""
    ys = []
    for t in range(u.shape[0]):
        state = torch.exp2(delta[t, ..., None] * exponents) * state + (delta[t] * u[t])[..., None] * B[t, :, None, :]
        ys.append((state * C[t, :, None, :]).sum(-1))
    return torch.stack(ys), state


def fused_chunk_backward(start_state, u, delta, A, exponents, B, C, grad_y, future):
    """`chunk_gradients`, one step at a time: recompute the chunk's states, then walk back through them."""
    states, decays = [start_state], []
    for t in range(u.shape[0]):
        decays.append(torch.exp2(delta[t, ..., None] * exponents))
        states.append(decays[t] * states[t] + (delta[t] * u[t])[..., None] * B[t, :, None, :])
    grad_u, grad_delta, grad_B, grad_C = [], [], [], []
    grad_A = torch.zeros_like(A)
    for t in range(u.shape[0] - 1, -1, -1):
        g = grad_y[t, ..., None] * C[t, :, None, :] + future
        grad_input = (g * B[t, :, None, :]).sum(-1)
        grad_exponent = decays[t] * states[t] * g
        grad_u.append(grad_input * delta[t])
        grad_delta.append(grad_input * u[t] + (grad_exponent * A).sum(-1))
        grad_B.append((g * (delta[t] * u[t])[..., None]).sum(1))
        grad_C.append((states[t + 1] * grad_y[t, ..., None]).sum(1))
        grad_A = grad_A + (grad_exponent * delta[t, ..., None]).sum(0)
        future = decays[t] * g
    grad_u, grad_delta, grad_B, grad_C = [torch.stack(steps[::-1]) for steps in (grad_u, grad_delta, grad_B, grad_C)]
    return grad_u, grad_delta, grad_A, grad_B, grad_C, future


@functools.cache
def compiled_chunk_function(function):
    """`function` through torch.compile, made once per process (inductor caches the kernels on disk)."""
    return torch.compile(function, fullgraph=True)


def selective_state_step(state, u, delta, exponents, B, C):
    """One step of the recurrence, the state (batch, d_inner, d_state) updated in place; u, delta (batch,
    d_inner), B, C (batch, d_state); `exponents` = A log2(e) (see `MusicHybridCache.decay_exponents`).
    Returns y (batch, d_inner) in float32."""
    delta = delta.float()
    decay = torch.exp2(delta[..., None] * exponents)
    state.mul_(decay).addcmul_((delta * u.float())[..., None], B.float()[:, None, :])
    return sum_over_state(state[None], C.float()[None])[0]


def time_major(t):
    """(batch, channels, T) -> contiguous float32 (T, batch, channels): each time step one contiguous block."""
    return t.float().permute(2, 0, 1).contiguous()


def scan_buffers(state, chunk_size):
    """Reused per-chunk buffers: decays (q, *state) and states h_0..h_q (q + 1, *state)."""
    decay = state.new_empty((chunk_size,) + tuple(state.shape), dtype=torch.float32)
    states = state.new_empty((chunk_size + 1,) + tuple(state.shape), dtype=torch.float32)
    return decay, states


def chunk_states(state, u, delta, exponents, B, decay, states):
    """Fill the buffers for one chunk of q steps (time-major u, delta (q, batch, d_inner), B (q, batch, d_state)):
    decay[t] = exp(delta_t A) = exp2(delta_t exponents) and states[0] = the state before the chunk, states[t + 1]
    = h after step t. Returns the views of the buffers that the chunk fills."""
    q = u.shape[0]
    decay, states = decay[:q], states[: q + 1]
    torch.mul(delta[..., None], exponents, out=decay).exp2_()
    states[0].copy_(state)
    torch.mul((delta * u)[..., None], B[:, :, None, :], out=states[1:])
    for t in range(q):
        states[t + 1].addcmul_(decay[t], states[t])
    return decay, states


# The two contractions of (q, batch, d_inner, d_state) chunks, each as a batch of (1, k) @ (k, m) products:
# the layout CPU BLAS runs fastest here (several times faster than einsum's choice).


def sum_over_state(states, vectors):
    """sum_n states[..., n] vectors[..., n]: (q, b, d_inner, d_state), (q, b, d_state) -> (q, b, d_inner)."""
    q, batch, d_inner, d_state = states.shape
    flat_states = states.reshape(q * batch, d_inner, d_state).transpose(1, 2)
    return torch.matmul(vectors.reshape(q * batch, 1, d_state), flat_states).view(q, batch, d_inner)


def sum_over_channels(states, vectors):
    """sum_d states[:, :, d] vectors[:, :, d]: (q, b, d_inner, d_state), (q, b, d_inner) -> (q, b, d_state)."""
    q, batch, d_inner, d_state = states.shape
    flat_states = states.reshape(q * batch, d_inner, d_state)
    return torch.matmul(vectors.reshape(q * batch, 1, d_inner), flat_states).view(q, batch, d_state)


# --------------------------------------------------------------------------------------------------------------------
# Registration: save_pretrained writes auto_map and copies both files; local use needs no remote code.
# --------------------------------------------------------------------------------------------------------------------

MusicHybridConfig.register_for_auto_class()
MusicHybridModel.register_for_auto_class("AutoModel")
MusicHybridForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register(MusicHybridConfig.model_type, MusicHybridConfig, exist_ok=True)
AutoModel.register(MusicHybridConfig, MusicHybridModel, exist_ok=True)
AutoModelForCausalLM.register(MusicHybridConfig, MusicHybridForCausalLM, exist_ok=True)
