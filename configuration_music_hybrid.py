"""Configuration of the music-hybrid language model over delayed DAC codes.

One config describes both architectures of the reference experiment: a pure
Transformer (every layer "full_attention") and a Jamba-style hybrid (Mamba-1
layers, "linear_attention", interleaved with attention layers). Presets
reproduce the published models; any field can be overridden and the derived
fields (head size, dt_rank "auto", layer_types from an attention period) follow.
"""

import math

from transformers import AutoConfig, PretrainedConfig

ATTENTION = "full_attention"
MAMBA = "linear_attention"
LAYER_TYPES = (ATTENTION, MAMBA)
# Each registered sequence-mixer kind and the transformers layer type it is filed under (transformers validates
# `layer_types` against its own names, and files every recurrent layer under "linear_attention").
# modeling_music_hybrid.register_mixer adds to it; a config names kinds in `mixer_types`.
MIXER_LAYER_TYPES = {"attention": ATTENTION, "mamba": MAMBA, "mamba2": MAMBA, "gated_deltanet": MAMBA}
# The kind a layer type means when a config gives only `layer_types` (every config saved before `mixer_types`).
DEFAULT_MIXER_TYPES = {ATTENTION: "attention", MAMBA: "mamba"}
POSITION_EMBEDDING_TYPES = ("learned", "rope", "none")
MEMORY_AGGREGATIONS = ("gated", "residual", "sparse")
MEMORY_INITS = ("base", "full")
MIXER_IMPLEMENTATIONS = ("auto", "kernels", "torch")
SCAN_CHUNK_SIZE = 16  # the PyTorch selective scan's chunk: memory segments end on chunk ends

# Published DAC 44.1 kHz codec: the default identity when a model is created
# without a dataset (training overwrites it with the dataset's codec).
PRETRAINED_DAC_IDENTITY = {
    "backend": "transformers",
    "model_id": "descript/dac_44khz",
    "revision": None,
    "seed": None,
    "config_overrides": None,
    "sample_rate": 44100,
    "hop_length": 512,
    "num_codebooks": 9,
    "codebook_size": 1024,
}


class MusicHybridConfig(PretrainedConfig):
    r"""
    Args:
        num_codebooks: codebooks per frame (DAC 44.1 kHz: 9); one sequence position carries one token per codebook.
        codebook_size: real codes per codebook (1024); the heads predict only these.
        vocab_size: embedding rows per codebook, codes plus special tokens (1027).
        pad_token_id / bos_token_id / eos_token_id: special ids, at or above `codebook_size`.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size: as in Llama.
        mixer_types: the sequence-mixer kind of every layer, a registered kind name ("attention", "mamba",
            "mamba2", "gated_deltanet", or one added with `modeling_music_hybrid.register_mixer`). When None it
            follows `layer_types` ("full_attention" -> "attention", "linear_attention" -> `recurrent_mixer`).
        recurrent_mixer: the kind of the recurrent layers when `mixer_types` follows `layer_types` or the attention
            period ("mamba", "mamba2", "gated_deltanet" or a registered recurrent kind), so that a layout overridden
            in depth keeps its kind.
        layer_types: transformers' name of every layer's type, "full_attention" or "linear_attention" (any
            recurrent mixer); derived from `mixer_types` when those are given. When both are None it is derived
            from `attention_period` / `attention_offset`: layer i is attention when i % period == offset (period 1
            gives a pure Transformer, period 0 a pure Mamba model).
        mamba_mlp: whether recurrent ("linear_attention") layers carry an MLP after the mixer (attention layers
            always do).
        position_embedding_type: "learned" absolute positions (`max_position_embeddings` rows), "rope", or "none".
        mamba_d_state, mamba_d_conv, mamba_expand, mamba_dt_rank ("auto" = ceil(hidden_size / 16)),
        mamba_conv_bias, mamba_proj_bias, mamba_dt_min, mamba_dt_max, mamba_dt_init_floor: Mamba-1 mixer settings,
            named and initialised as in mamba_ssm's `Mamba`.
        mamba_implementation: "auto" (mamba-ssm CUDA kernels on CUDA tensors when installed, PyTorch otherwise),
            "kernels" (always the kernels), "torch" (never) or "compiled" (the PyTorch scan with each chunk of
            steps fused by torch.compile: faster on CPU (docs/performance.md), compiled on first use; needs a C++
            compiler).
        mamba_memory_segment_length: memory caching (Behrouz et al. 2026, "Memory Caching: RNNs with Growing
            Memory") in every Mamba layer when set, a positive multiple of 16 (the scan's chunk); None (the default)
            is plain Mamba-1. The sequence is cut into segments of this many positions; each Mamba layer caches
            its SSM state h^(i) at the end of every segment, with the key k^(i) = mean of B over the segment. Each
            later position t reads the cached states with its C_t (C_t . h^(i)) next to the live readout
            C_t . h_t, mixed by weights over <W_u x_t, k> / sqrt(d_state) (the live key: mean of B over the
            current segment so far); W_u is the mixer's `memory_query`, nn.Linear(d_inner, d_state, bias=False),
            initialised like every linear layer (normal, std `initializer_range`). A learned gate `memory_gate`
            (one scalar per layer) scales what the cached memories change: y = y_live + gate (y_memories -
            y_live). In the first segment the output is plain Mamba-1's. Such layers run the PyTorch scan on every
            device (the CUDA kernels return no segment-end states).
            The same settings cache the matrix memories of "mamba2" and "gated_deltanet" layers (see
            matrix_memory_caching_music_hybrid.py: per Mamba-2 group or Gated DeltaNet query/key head, keys the
            mean of B or k, read with C or q).
        mamba_memory_aggregation: how the memories are mixed: "gated" (softmax of the scores over the live and
            cached memories, the paper's gated residual memory), "residual" (every weight 1) or "sparse" (softmax
            over the live memory and the `mamba_memory_top_k` cached segments of highest score).
        mamba_memory_top_k: cached segments read by "sparse" (>= 1).
        mamba_memory_max_segments: only this many most recent cached segments take part (None: all), in training
            and decoding alike; it bounds the decoding cache.
        mamba_memory_init: where the gate starts: "base" (0: the layer computes its plain Mamba-1 layer's outputs
            until it trains, so memory caching added to a trained model continues from exactly its outputs) or
            "full" (1: the cached memories take part at full weight from the start, the only behaviour before this
            option existed; configs saved with memory caching before it load as "full", see `from_dict`).
        mamba2_d_state, mamba2_d_conv, mamba2_expand, mamba2_headdim, mamba2_ngroups, mamba2_d_ssm (None: all of
        d_inner), mamba2_A_init_range, mamba2_dt_min, mamba2_dt_max, mamba2_dt_init_floor, mamba2_conv_bias,
        mamba2_bias, mamba2_chunk_size: the "mamba2" mixer's settings, named, defaulted and initialised as
            mamba_ssm's `Mamba2` arguments (d_state, d_conv, expand, headdim, ngroups, d_ssm, A_init_range, dt_min,
            dt_max, dt_init_floor, conv_bias, bias, chunk_size: the CUDA kernels' chunk).
        mamba2_implementation: "auto" (mamba-ssm's CUDA kernels on CUDA tensors when installed, the PyTorch chunked
            SSD scan otherwise), "kernels" (always the kernels) or "torch" (never).
        gdn_num_heads, gdn_num_v_heads (None: gdn_num_heads), gdn_head_dim, gdn_expand_v, gdn_conv_size,
        gdn_conv_bias, gdn_norm_eps: the "gated_deltanet" mixer's settings, named and defaulted as
            flash-linear-attention's `GatedDeltaNet` arguments (num_heads, num_v_heads, head_dim, expand_v,
            conv_size, conv_bias, norm_eps; with its output gate and short convolutions).
        gdn_implementation: "auto" (flash-linear-attention's kernels on CUDA tensors when installed, the PyTorch
            chunked delta rule otherwise), "kernels" or "torch".
        label_smoothing: applied to the training loss only (evaluation reports plain cross entropy).
        codebook_loss_weights: optional per-codebook weights of the loss (a weighted mean).
        codec: identity of the codec the codes come from (backend, model id, revision or seed, rates), so that
            generated codes are decoded with the same codec.
        genres: names of the genres the model is conditioned on, or None for an unconditional model. A conditional
            model has one embedding row per genre plus the null genre (id `len(genres)`, "no genre given"), added to
            every position; `generate(genre=..., guidance_scale=...)` samples with classifier-free guidance.
        text_encoder: a Hub name or folder of a transformers text encoder (T5 as MusicGen, or any encoder
            `AutoModelForTextEncoding` builds) for a text-conditioned model, or None (the default: no text
            condition, the model's weights and keys those it had before text existed). A new model takes the
            encoder's pretrained weights and tokenizer from there; a checkpoint carries both. Every decoder layer
            reads the encoded description by cross-attention; `generate(text=..., guidance_scale=...)` (see
            conditions_music_hybrid.TextCondition). Genres and text may be combined.
        text_encoder_config: the text encoder's config as a dict, read from `text_encoder` when not given (an
            encoder that cannot be read is refused here, before any work).
        train_text_encoder: whether the text encoder trains with the model (False: frozen, as MusicGen's T5).
        max_text_length: descriptions are cut to this many tokens.
        condition_dropout: probability that a training example sees the null values of its conditions (the null
            genre, the empty description) instead of its own (what classifier-free guidance needs: the same model
            must also predict without them).
    """

    model_type = "music_hybrid"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        num_codebooks=9,
        codebook_size=1024,
        vocab_size=1027,
        pad_token_id=1024,
        bos_token_id=1025,
        eos_token_id=1026,
        hidden_size=768,
        num_hidden_layers=20,
        num_attention_heads=12,
        num_key_value_heads=None,
        intermediate_size=3072,
        hidden_act="gelu",
        layer_types=None,
        mixer_types=None,
        recurrent_mixer="mamba",
        attention_period=1,
        attention_offset=0,
        mamba_mlp=False,
        position_embedding_type="learned",
        max_position_embeddings=8192,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        mamba_d_state=64,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank="auto",
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        mamba_dt_min=0.001,
        mamba_dt_max=0.1,
        mamba_dt_init_floor=1e-4,
        mamba_implementation="auto",
        mamba_memory_segment_length=None,
        mamba_memory_aggregation="gated",
        mamba_memory_top_k=2,
        mamba_memory_max_segments=None,
        mamba_memory_init="base",
        mamba2_d_state=128,
        mamba2_d_conv=4,
        mamba2_expand=2,
        mamba2_headdim=64,
        mamba2_ngroups=1,
        mamba2_d_ssm=None,
        mamba2_A_init_range=(1, 16),
        mamba2_dt_min=0.001,
        mamba2_dt_max=0.1,
        mamba2_dt_init_floor=1e-4,
        mamba2_conv_bias=True,
        mamba2_bias=False,
        mamba2_chunk_size=256,
        mamba2_implementation="auto",
        gdn_num_heads=6,
        gdn_num_v_heads=None,
        gdn_head_dim=256,
        gdn_expand_v=2,
        gdn_conv_size=4,
        gdn_conv_bias=False,
        gdn_norm_eps=1e-5,
        gdn_implementation="auto",
        initializer_range=0.02,
        label_smoothing=0.0,
        codebook_loss_weights=None,
        codec=None,
        genres=None,
        text_encoder=None,
        text_encoder_config=None,
        train_text_encoder=False,
        max_text_length=256,
        condition_dropout=0.0,
        use_cache=True,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        if mixer_types is None:
            if layer_types is None:
                layer_types = self.periodic_layer_types(num_hidden_layers, attention_period, attention_offset)
            mixer_types = [
                recurrent_mixer if layer_type == MAMBA else DEFAULT_MIXER_TYPES.get(layer_type, layer_type)
                for layer_type in layer_types
            ]
        self.mixer_types = list(mixer_types)
        self.recurrent_mixer = recurrent_mixer
        self.layer_types = [MIXER_LAYER_TYPES.get(kind, kind) for kind in self.mixer_types]
        self.mamba_mlp = mamba_mlp
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.mamba_d_state = mamba_d_state
        self.mamba_d_conv = mamba_d_conv
        self.mamba_expand = mamba_expand
        self.mamba_dt_rank = mamba_dt_rank
        self.mamba_conv_bias = mamba_conv_bias
        self.mamba_proj_bias = mamba_proj_bias
        self.mamba_dt_min = mamba_dt_min
        self.mamba_dt_max = mamba_dt_max
        self.mamba_dt_init_floor = mamba_dt_init_floor
        self.mamba_implementation = mamba_implementation
        self.mamba_memory_segment_length = mamba_memory_segment_length
        self.mamba_memory_aggregation = mamba_memory_aggregation
        self.mamba_memory_top_k = mamba_memory_top_k
        self.mamba_memory_max_segments = mamba_memory_max_segments
        self.mamba_memory_init = mamba_memory_init
        self.mamba2_d_state = mamba2_d_state
        self.mamba2_d_conv = mamba2_d_conv
        self.mamba2_expand = mamba2_expand
        self.mamba2_headdim = mamba2_headdim
        self.mamba2_ngroups = mamba2_ngroups
        self.mamba2_d_ssm = mamba2_d_ssm
        self.mamba2_A_init_range = list(mamba2_A_init_range)
        self.mamba2_dt_min = mamba2_dt_min
        self.mamba2_dt_max = mamba2_dt_max
        self.mamba2_dt_init_floor = mamba2_dt_init_floor
        self.mamba2_conv_bias = mamba2_conv_bias
        self.mamba2_bias = mamba2_bias
        self.mamba2_chunk_size = mamba2_chunk_size
        self.mamba2_implementation = mamba2_implementation
        self.gdn_num_heads = gdn_num_heads
        self.gdn_num_v_heads = gdn_num_heads if gdn_num_v_heads is None else gdn_num_v_heads
        self.gdn_head_dim = gdn_head_dim
        self.gdn_expand_v = gdn_expand_v
        self.gdn_conv_size = gdn_conv_size
        self.gdn_conv_bias = gdn_conv_bias
        self.gdn_norm_eps = gdn_norm_eps
        self.gdn_implementation = gdn_implementation
        self.initializer_range = initializer_range
        self.label_smoothing = label_smoothing
        self.codebook_loss_weights = None if codebook_loss_weights is None else list(codebook_loss_weights)
        self.codec = codec
        self.genres = None if genres is None else list(genres)
        self.text_encoder = text_encoder
        if text_encoder is not None and text_encoder_config is None:
            text_encoder_config = read_text_encoder_config(text_encoder)
        self.text_encoder_config = text_encoder_config
        self.train_text_encoder = train_text_encoder
        self.max_text_length = max_text_length
        self.condition_dropout = condition_dropout
        self.use_cache = use_cache
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        # Our checks run first so that errors name our fields (PretrainedConfig checks layer_types too).
        self.validate_fields(layer_types)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' from_dict (every saved config loads through it). A config saved with memory caching before
        `mamba_memory_init` existed gets "full", the behaviour it was trained with; one saved without memory
        caching gets the default, so memory caching added to it starts as its base layers."""
        if config_dict.get("mamba_memory_segment_length") is not None and "mamba_memory_init" not in config_dict:
            config_dict = {**config_dict, "mamba_memory_init": "full"}
        return super().from_dict(config_dict, **kwargs)

    @staticmethod
    def periodic_layer_types(num_layers, attention_period, attention_offset):
        if attention_period == 0:
            return [MAMBA] * num_layers
        return [ATTENTION if i % attention_period == attention_offset else MAMBA for i in range(num_layers)]

    # Derived fields are properties so that overriding width or depth keeps them right.
    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def mamba_d_inner(self):
        return self.mamba_expand * self.hidden_size

    @property
    def mamba_dt_rank_value(self):
        return math.ceil(self.hidden_size / 16) if self.mamba_dt_rank == "auto" else self.mamba_dt_rank

    @property
    def mamba_memory(self):
        """Whether the Mamba layers cache their memory (see `mamba_memory_segment_length`)."""
        return self.mamba_memory_segment_length is not None

    @property
    def num_attention_layers(self):
        return self.layer_types.count(ATTENTION)

    @property
    def null_genre_id(self):
        """The id of "no genre": the row after the named genres (None for an unconditional model)."""
        return None if self.genres is None else len(self.genres)

    def genre_id(self, genre):
        """The id of a genre name; None (no genre) is the null genre. Unknown names raise, listing the known ones."""
        if self.genres is None:
            raise ValueError("this model is unconditional (config.genres is None): it takes no genre")
        if genre is None:
            return self.null_genre_id
        if genre not in self.genres:
            raise ValueError(f"unknown genre {genre!r}; this model knows {self.genres}")
        return self.genres.index(genre)

    def validate_fields(self, given_layer_types=None):
        """Every field's check, with clear errors; `given_layer_types`: the layer_types passed with the fields."""
        def fail(field, message):
            raise ValueError(f"MusicHybridConfig.{field}: {message}")

        for field in ("num_codebooks", "codebook_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.vocab_size < self.codebook_size + 2:
            fail("vocab_size", f"must hold {self.codebook_size} codes plus pad and bos, got {self.vocab_size}")
        for field in ("pad_token_id", "bos_token_id"):
            value = getattr(self, field)
            if not isinstance(value, int) or not self.codebook_size <= value < self.vocab_size:
                fail(field, f"must be a special id in [{self.codebook_size}, {self.vocab_size}), got {value!r}")
        if self.pad_token_id == self.bos_token_id:
            fail("bos_token_id", "must differ from pad_token_id")
        if self.eos_token_id is not None and not self.codebook_size <= self.eos_token_id < self.vocab_size:
            fail("eos_token_id", f"must be a special id in [{self.codebook_size}, {self.vocab_size}) or None")
        if MIXER_LAYER_TYPES.get(self.recurrent_mixer) != MAMBA:
            recurrent = sorted(kind for kind, layer_type in MIXER_LAYER_TYPES.items() if layer_type == MAMBA)
            fail("recurrent_mixer", f"must be a registered recurrent kind {recurrent}, got {self.recurrent_mixer!r}")
        if given_layer_types is not None:
            unknown = sorted(set(given_layer_types) - set(LAYER_TYPES))
            if unknown:
                fail("layer_types", f"unknown layer types {unknown}; use {list(LAYER_TYPES)}")
            if given_layer_types != self.layer_types:
                fail("layer_types", f"{given_layer_types} disagrees with mixer_types {self.mixer_types}")
        if len(self.mixer_types) != self.num_hidden_layers:
            field = "mixer_types" if given_layer_types is None else "layer_types"
            fail(field, f"has {len(self.mixer_types)} entries for num_hidden_layers={self.num_hidden_layers}")
        unknown = sorted(set(self.mixer_types) - set(MIXER_LAYER_TYPES))
        if unknown:
            fail(
                "mixer_types",
                f"unknown kinds {unknown}; registered: {sorted(MIXER_LAYER_TYPES)} (register a new kind with "
                "modeling_music_hybrid.register_mixer before building or loading the model)",
            )
        if self.num_attention_layers or self.text_encoder is not None:  # text: cross-attention in every layer
            if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
                fail("num_attention_heads", f"{self.num_attention_heads} does not divide hidden_size={self.hidden_size}")
            if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
                fail(
                    "num_key_value_heads",
                    f"{self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}",
                )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            fail("position_embedding_type", f"{self.position_embedding_type!r} is not one of {POSITION_EMBEDDING_TYPES}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            fail("num_attention_heads", f"RoPE needs an even head size, got {self.head_dim}")
        if self.mamba_dt_rank != "auto" and (not isinstance(self.mamba_dt_rank, int) or self.mamba_dt_rank <= 0):
            fail("mamba_dt_rank", f"must be 'auto' or a positive integer, got {self.mamba_dt_rank!r}")
        for field in ("mamba_d_state", "mamba_d_conv", "mamba_expand"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.mamba_implementation not in ("auto", "kernels", "torch", "compiled"):
            fail(
                "mamba_implementation",
                f"must be 'auto', 'kernels', 'torch' or 'compiled', got {self.mamba_implementation!r}",
            )
        segment_length = self.mamba_memory_segment_length
        if segment_length is not None and (
            not isinstance(segment_length, int) or segment_length <= 0 or segment_length % SCAN_CHUNK_SIZE
        ):
            fail(
                "mamba_memory_segment_length",
                f"must be None or a positive multiple of {SCAN_CHUNK_SIZE} (the scan's chunk), got {segment_length!r}",
            )
        if self.mamba_memory_aggregation not in MEMORY_AGGREGATIONS:
            aggregation = self.mamba_memory_aggregation
            fail("mamba_memory_aggregation", f"must be one of {MEMORY_AGGREGATIONS}, got {aggregation!r}")
        if not isinstance(self.mamba_memory_top_k, int) or self.mamba_memory_top_k < 1:
            fail("mamba_memory_top_k", f"must be an integer >= 1, got {self.mamba_memory_top_k!r}")
        max_segments = self.mamba_memory_max_segments
        if max_segments is not None and (not isinstance(max_segments, int) or max_segments < 1):
            fail("mamba_memory_max_segments", f"must be None or an integer >= 1, got {max_segments!r}")
        if self.mamba_memory_init not in MEMORY_INITS:
            fail("mamba_memory_init", f"must be one of {MEMORY_INITS}, got {self.mamba_memory_init!r}")
        if "mamba2" in self.mixer_types:
            self.validate_mamba2_fields(fail)
        if "gated_deltanet" in self.mixer_types:
            self.validate_gdn_fields(fail)
        if self.codebook_loss_weights is not None:
            if len(self.codebook_loss_weights) != self.num_codebooks:
                fail("codebook_loss_weights", f"needs {self.num_codebooks} values, got {len(self.codebook_loss_weights)}")
            if min(self.codebook_loss_weights) < 0 or sum(self.codebook_loss_weights) <= 0:
                fail("codebook_loss_weights", "must be non-negative with a positive sum")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.genres is not None:
            if not self.genres or not all(isinstance(genre, str) and genre for genre in self.genres):
                fail("genres", f"must be None or a non-empty list of non-empty names, got {self.genres!r}")
            if len(set(self.genres)) != len(self.genres):
                fail("genres", f"names must be unique, got {self.genres!r}")
        if not isinstance(self.condition_dropout, (int, float)) or not 0.0 <= self.condition_dropout < 1.0:
            fail("condition_dropout", f"must be in [0, 1), got {self.condition_dropout!r}")
        if self.text_encoder is not None and not isinstance(self.text_encoder, str):
            fail("text_encoder", f"must be None or a Hub name or folder, got {self.text_encoder!r}")
        if not isinstance(self.max_text_length, int) or isinstance(self.max_text_length, bool) or self.max_text_length < 1:
            fail("max_text_length", f"must be a positive integer, got {self.max_text_length!r}")
        if self.condition_dropout and self.genres is None and self.text_encoder is None:
            fail("condition_dropout", "needs genres or a text_encoder: an unconditional model has no condition to drop")

    def validate_mamba2_fields(self, fail):
        for field in ("mamba2_d_state", "mamba2_d_conv", "mamba2_expand", "mamba2_headdim", "mamba2_ngroups",
                      "mamba2_chunk_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(field, f"must be a positive integer, got {value!r}")
        d_inner = self.mamba2_expand * self.hidden_size
        d_ssm = d_inner if self.mamba2_d_ssm is None else self.mamba2_d_ssm
        if not isinstance(d_ssm, int) or not 0 < d_ssm <= d_inner:
            fail("mamba2_d_ssm", f"must be None or an integer in [1, {d_inner}] (mamba2_expand * hidden_size), got {d_ssm!r}")
        if d_ssm % self.mamba2_headdim:
            fail("mamba2_headdim", f"{self.mamba2_headdim} does not divide the SSM channels ({d_ssm})")
        nheads = d_ssm // self.mamba2_headdim
        if nheads % self.mamba2_ngroups or d_ssm % self.mamba2_ngroups:
            fail("mamba2_ngroups", f"{self.mamba2_ngroups} does not divide the {nheads} heads")
        low_high = self.mamba2_A_init_range
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            fail("mamba2_A_init_range", f"must be (low, high) with 0 < low <= high, got {low_high!r}")
        if not 0 < self.mamba2_dt_min <= self.mamba2_dt_max:
            fail("mamba2_dt_min", f"must satisfy 0 < mamba2_dt_min <= mamba2_dt_max, got {self.mamba2_dt_min!r}")
        if self.mamba2_implementation not in MIXER_IMPLEMENTATIONS:
            fail("mamba2_implementation", f"must be one of {MIXER_IMPLEMENTATIONS}, got {self.mamba2_implementation!r}")

    def validate_gdn_fields(self, fail):
        for field in ("gdn_num_heads", "gdn_num_v_heads", "gdn_head_dim", "gdn_conv_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.gdn_num_v_heads % self.gdn_num_heads:
            fail("gdn_num_v_heads", f"{self.gdn_num_v_heads} is not a multiple of gdn_num_heads={self.gdn_num_heads}")
        head_v_dim = self.gdn_head_dim * self.gdn_expand_v
        if not isinstance(self.gdn_expand_v, (int, float)) or head_v_dim <= 0 or head_v_dim != int(head_v_dim):
            fail("gdn_expand_v", f"gdn_head_dim * gdn_expand_v must be a positive integer, got {head_v_dim!r}")
        if not isinstance(self.gdn_norm_eps, (int, float)) or self.gdn_norm_eps <= 0:
            fail("gdn_norm_eps", f"must be positive, got {self.gdn_norm_eps!r}")
        if self.gdn_implementation not in MIXER_IMPLEMENTATIONS:
            fail("gdn_implementation", f"must be one of {MIXER_IMPLEMENTATIONS}, got {self.gdn_implementation!r}")

    @classmethod
    def from_preset(cls, name, **overrides):
        """A preset by name (see `PRESETS`), with any field overridden. It records the published DAC 44.1 kHz codec
        unless `codec` is given (training replaces it with its dataset's codec)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {key: value for key, value in PRESETS[name].items() if key != "description"}
        fields["codec"] = dict(PRETRAINED_DAC_IDENTITY)
        fields.update(overrides)
        return cls(**fields)


def read_text_encoder_config(text_encoder):
    """The config of the text encoder a Hub name or folder holds, as a dict; a ValueError naming the fix when it
    cannot be read."""
    try:
        return AutoConfig.from_pretrained(text_encoder).to_dict()
    except (OSError, ValueError) as error:
        raise ValueError(
            f"MusicHybridConfig.text_encoder: cannot load {text_encoder!r} ({error}); pass a Hub name (online once, "
            "then cached) or a folder holding a transformers text encoder (config.json and its weights), e.g. one "
            "written by training/text_encoders.py's save_random_text_encoder"
        ) from error


_PUBLISHED = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=8192)
_MAMBA_1 = dict(mamba_d_state=64, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=48)
_TINY = dict(
    hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=512,
    mamba_d_state=8, mamba_dt_rank="auto",
)
_SMALL = dict(
    hidden_size=256, num_attention_heads=4, intermediate_size=1024, max_position_embeddings=4096,
    mamba_d_state=16, mamba_dt_rank="auto",
)

PRESETS = {
    "transformer-162m": dict(
        description="Published baseline: 20 attention layers, d_model 768, 12 heads, GELU MLP 3072, learned positions.",
        num_hidden_layers=20, attention_period=1, **_PUBLISHED,
    ),
    "hybrid-116m": dict(
        description="Published hybrid: [mamba x3, attention] x5, Mamba-1 (d_state 64, expand 2, dt_rank 48) without MLP.",
        num_hidden_layers=20, attention_period=4, attention_offset=3, mamba_mlp=False, **_PUBLISHED, **_MAMBA_1,
    ),
    "hybrid-mamba2-116m": dict(
        description="The published hybrid with Mamba-2 in place of Mamba-1: [mamba2 x3, attention] x5, no MLP; "
        "mamba_ssm's Mamba2 defaults (expand 2, 1 group, d_conv 4) with d_state 256 and head size 32 (48 heads) "
        "instead of 128 and 64, which match the published count (the defaults give 112.35M).",
        num_hidden_layers=20, attention_period=4, attention_offset=3, recurrent_mixer="mamba2", mamba_mlp=False,
        mamba2_d_state=256, mamba2_headdim=32, **_PUBLISHED,
    ),
    "hybrid-gdn-116m": dict(
        description="The published hybrid with Gated DeltaNet in place of Mamba-1: [gated_deltanet x3, attention] x5, "
        "no MLP; fla's GatedDeltaNet defaults (6 heads, expand_v 2, output gate, short convs of 4) with head size 108 "
        "(fla's rule of 0.75 d_model for the keys, head size 96, gives 109.24M).",
        num_hidden_layers=20, attention_period=4, attention_offset=3, recurrent_mixer="gated_deltanet",
        mamba_mlp=False, gdn_num_heads=6, gdn_head_dim=108, gdn_expand_v=2, **_PUBLISHED,
    ),
    "hybrid-matched": dict(
        description="Parameter-matched hybrid: the published hybrid made deeper, 30 layers "
        "([mamba x3, attention] x7 then mamba x2), within 0.2 percent of transformer-162m (presets_table.py).",
        num_hidden_layers=30, attention_period=4, attention_offset=3, mamba_mlp=False, **_PUBLISHED, **_MAMBA_1,
    ),
    "transformer-small": dict(
        description="Laptop-size Transformer: 8 layers, d_model 256.", num_hidden_layers=8, attention_period=1, **_SMALL,
    ),
    "hybrid-small": dict(
        description="Laptop-size hybrid: [mamba x3, attention] x2, d_model 256.",
        num_hidden_layers=8, attention_period=4, attention_offset=3, **_SMALL,
    ),
    "transformer-tiny": dict(
        description="Test-size Transformer: 2 layers, d_model 64.", num_hidden_layers=2, attention_period=1, **_TINY,
    ),
    "hybrid-tiny": dict(
        description="Test-size hybrid: [mamba, attention] x2, d_model 64.",
        num_hidden_layers=4, attention_period=2, attention_offset=1, **_TINY,
    ),
    "hybrid-mc-116m": dict(
        description="The published hybrid with gated memory caching in every Mamba layer (segments of 256 positions).",
        num_hidden_layers=20, attention_period=4, attention_offset=3, mamba_mlp=False,
        mamba_memory_segment_length=256, mamba_memory_aggregation="gated", **_PUBLISHED, **_MAMBA_1,
    ),
    "hybrid-mc-tiny": dict(
        description="Test-size hybrid with memory caching: [mamba, attention] x2, d_model 64, segments of 16.",
        num_hidden_layers=4, attention_period=2, attention_offset=1, mamba_memory_segment_length=16, **_TINY,
    ),
    "mamba-mc-tiny": dict(
        description="Test-size pure Mamba model with memory caching: 2 Mamba layers with MLPs, segments of 16.",
        num_hidden_layers=2, attention_period=0, mamba_mlp=True, position_embedding_type="none",
        mamba_memory_segment_length=16, **_TINY,
    ),
    "hybrid-mamba2-tiny": dict(
        description="Test-size Mamba-2 hybrid: [mamba2, attention] x2, d_model 64, d_state 16, 8 heads of 16, 2 groups.",
        num_hidden_layers=4, attention_period=2, attention_offset=1, recurrent_mixer="mamba2", mamba2_d_state=16, mamba2_headdim=16,
        mamba2_ngroups=2, **_TINY,
    ),
    "hybrid-gdn-tiny": dict(
        description="Test-size Gated DeltaNet hybrid: [gated_deltanet, attention] x2, d_model 64, 2 query/key heads "
        "of 16, 4 value heads of 32.",
        num_hidden_layers=4, attention_period=2, attention_offset=1, recurrent_mixer="gated_deltanet", gdn_num_heads=2, gdn_num_v_heads=4,
        gdn_head_dim=16, gdn_expand_v=2, **_TINY,
    ),
    "mamba-tiny": dict(
        description="Test-size pure Mamba model: 2 Mamba layers with MLPs, d_model 64, no positions.",
        num_hidden_layers=2, attention_period=0, mamba_mlp=True, position_embedding_type="none", **_TINY,
    ),
}
