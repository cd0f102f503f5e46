"""Generation: generate() and its decoding loop, sampling, classifier-free guidance, and the request checks.

`MusicHybridGenerationMixin` gives the causal LM generate() (prompts in natural layout, the delay pattern handled
here, per-codebook sampling, several samples per prompt, streaming, long form), and the decoding-time settings
compile_decoding() and quantize_weights(), whose machinery lives in fast_decoding_music_hybrid.py. It uses
transformers' public pieces (GenerationConfig, logits warpers, the output class), not GenerationMixin's private
loop. Conditions come from the backbone's providers and are guided by `ClassifierFreeGuidance`
(conditions_music_hybrid.py). Shipped with every checkpoint.
"""

import copy

import torch
import torch.nn.functional as F
from transformers import GenerationConfig
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.utils import logging

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .conditions_music_hybrid import CONDITIONS, ClassifierFreeGuidance
    from .delay_pattern_music_hybrid import apply_delay_pattern, undo_delay_pattern
    from .fast_decoding_music_hybrid import (
        CUDAGraphStep, compiled_step, decoding_substitutes, decoding_threads, quantize_linear_layers,
    )
except ImportError:  # from the repository root they are plain modules
    from conditions_music_hybrid import CONDITIONS, ClassifierFreeGuidance
    from delay_pattern_music_hybrid import apply_delay_pattern, undo_delay_pattern
    from fast_decoding_music_hybrid import (
        CUDAGraphStep, compiled_step, decoding_substitutes, decoding_threads, quantize_linear_layers,
    )

logger = logging.get_logger(__name__)


class MusicHybridGenerationMixin:
    """generate() and the decoding settings of MusicHybridForCausalLM (which provides `model`, the backbone,
    `lm_head`, `config` and `generation_config`)."""

    @torch.no_grad()
    def generate(
        self, input_ids=None, generation_config=None, streamer=None, long_form=None, context_window=None, **kwargs,
    ):
        """Sample codes, returned in natural layout (B * num_return_sequences, K, T + max_new_tokens) as int64.

        input_ids: None (unconditional) or prompt codes (B, K, T) in natural layout, ids in [0, codebook_size).
        Rows i*n ... (i+1)*n-1 continue prompt i (n = num_return_sequences), each an independent sample.
        genre (genre-conditioned models, and likewise every condition the model has; see conditions_music_hybrid.py):
            None (the null genre), a name for every row, or a list of names (None entries allowed) with one per
            prompt or one per returned row.
        text (text-conditioned models): likewise None (no description), a description for every row, or a list
            with one per prompt or one per returned row (None or "" entries: no description). The encoder runs
            at the start of the call (on the descriptions, and under guidance on the empty one), never per step;
            each layer's cross-attention keys and values are computed at the prefill and kept in the cache.
        guidance_scale (conditional models, a generation-config field): g > 1 samples with classifier-free
            guidance, each codebook's logits null + g * (cond - null), from one batch holding every row twice
            (with its conditions and with the null ones); None or 1: plain conditional sampling.
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
        requested = {kind.generate_argument: kwargs.pop(kind.generate_argument, None) for kind in CONDITIONS.values()}
        config, explicit = merged_generation_config(self.generation_config, generation_config, kwargs)
        prompt = prepare_prompt(input_ids, self.config, self.device)
        num_prompts = prompt.shape[0]
        prompt = prompt.repeat_interleave(config.num_return_sequences or 1, dim=0)
        if prompt.shape[0] == 0:
            raise ValueError("input_ids has an empty batch")
        max_new_tokens = frames_to_generate(config, explicit, prompt.shape[2])
        sampler = CodebookSampler(config, self.config.num_codebooks)
        # last of the checks: a text condition encodes its descriptions here
        condition = ClassifierFreeGuidance.for_generation(
            self.model.condition_providers(), requested, config.guidance_scale, num_prompts, prompt.shape[0],
            prompt.device,
        )
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

        The compiled step is `MusicHybridModel.decode` on a fixed-shape cache (see cache_music_hybrid.py): one graph
        serves every step of a generation. Compiling removes the per-step Python and dispatch work of the layer
        loop and fuses the elementwise ops. Shapes are dynamic by default, so the only compilations are one per
        kind of batch, whatever the lengths: 1, 2 or 3, and 4 or more (which multiply by packed weights on CPU,
        see `FewRowLinear`), cached on disk by inductor. `compile_options` go to torch.compile (see
        `compiled_step` for the CPU defaults).
        cuda_graph: on a GPU, also record the step as a CUDA graph once per generation and replay it at every
        position (see `CUDAGraphStep`); ignored on CPU.
        """
        self._compiled_decode = compiled_step(self.model.decode, self.device, **compile_options) if enabled else None
        self._decode_with_cuda_graph = enabled and cuda_graph
        self._compiled_thread_counts = set()  # see _note_compiling_again

    def _note_compiling_again(self, threads):
        """A compiled step is specialised to torch's thread count (inductor writes it into the CPU code), so the
        first generation on a count chosen at its start under load compiles the step again: say so, since that
        takes about as long as the first compilation."""
        if self._compiled_thread_counts and threads not in self._compiled_thread_counts:
            logger.warning(
                f"the decoding step compiles again, for {threads} thread(s), which this generation's start found "
                "faster (see decoding_threads); once per thread count"
            )
        self._compiled_thread_counts.add(threads)

    def quantize_weights(self, mode="int8"):
        """Quantize the linear layers to int8 (one scale per output channel) for CPU decoding; returns the model.

        A decoding step reads every weight once, so a quarter of the bytes can decode up to four times as fast as float32.
        In place, for inference, on a float32 model on CPU (on GPUs, decode in bfloat16). The embedding tables
        stay float32 (a step reads one row of each), and so do a text condition's encoder and projection, which
        run once per generation, before the decoding steps (the layers' cross-attention is quantized). Each Mamba
        dt_proj, whose outputs set the decays exp(delta A) of the state, is quantized too: bench/int8_quality.py measures the effect on the validation loss (see
        docs/performance.md). See `Int8Linear` for the product.
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
        model_rows, conditions = condition.num_model_rows(batch), condition.model_conditions
        cache = self.model.new_cache(
            model_rows, num_positions, attention_window=attention_window, fixed_shape=compiled is not None
        )
        decode = compiled or self.model.decode
        if compiled is not None and self._decode_with_cuda_graph and prompt.is_cuda:
            decode = CUDAGraphStep(compiled)
        prefill_length = prompt_frames + 1  # every codebook of these positions is known
        # The thread count is chosen once (each step of a sample runs the same products), then the decoding-time fast
        # paths are swapped in for the generation.
        with decoding_threads(self, model_rows) as threads, decoding_substitutes(self, model_rows):
            if compiled is not None:
                self._note_compiling_again(threads)
            prefill = condition.model_rows(tokens[:, :, :prefill_length])
            # whatever output flags the config sets: generate reads the last hidden state only
            flags = {"output_hidden_states": False, "return_dict": True}
            hidden = self.model(prefill, cache, **flags, **conditions).last_hidden_state
            for position in range(prefill_length, num_positions):
                logits = self.lm_head(hidden[:, -1]).view(model_rows, num_codebooks, -1)
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
                    hidden = decode(inputs, positions, cache, **conditions)
                    cache.advance(1)
        return undo_delay_pattern(tokens[:, :, 1:])



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
# Output flags, which from_pretrained(path, output_hidden_states=True, ...) sets on the generation config too:
# return_dict concerns forward() alone, and the others ask generate() for something only with
# return_dict_in_generate, as in transformers.
GENERATION_OUTPUT_FLAGS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


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
    ignored = GENERATION_FIELDS_HONOURED | {"return_dict"}
    if not config.return_dict_in_generate:
        ignored |= set(GENERATION_OUTPUT_FLAGS)
    refused = sorted(
        name for name, value in config.to_dict().items()
        if name not in ignored and value is not None and value != GENERATION_NEUTRAL_VALUES.get(name)
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


