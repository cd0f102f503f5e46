"""Train and evaluate a music-hybrid language model on DAC codes, with Accelerate.

    python run_clm_audio.py --model_preset hybrid-small --dataset_name outputs/codes --output_dir outputs/run \
        --do_train --do_eval --max_steps 2000
    accelerate launch run_clm_audio.py recipes/hybrid-116m.yaml --dataset_name outputs/fma-codes
    python run_clm_audio.py --model_name_or_path outputs/run --dataset_name outputs/codes --output_dir outputs/eval \
        --do_eval

Arguments come from the command line or from a YAML/JSON file given first (later command-line options override it).
The same code runs on CPU, one GPU, DDP and FSDP: choose with `accelerate launch` / `accelerate config`.

How a step, its loss and an exact resume work: see training/loop.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

import yaml

from cli.arguments import parse_dataclasses, report_error
from cli.interrupts import treat_sigterm_as_interrupt
from cli.paths import check_codes_dataset, check_model
from cli.progress import hide_transformers_bars

MIXED_PRECISION_CHOICES = ["no", "fp16", "bf16"]


# --------------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved model folder or Hub id to start from (fine-tuning, or evaluation with --do_eval "
                  "alone). Unset: train --model_preset from scratch."},
    )
    model_preset: str = field(
        default="hybrid-small",
        metadata={"help": "Architecture when training from scratch: transformer-162m, hybrid-116m, hybrid-matched, "
                  "transformer-small, hybrid-small, transformer-tiny, hybrid-tiny, mamba-tiny."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to override, 'field=value,field=value' (values parsed as JSON when they "
                  "can be) or a JSON object, e.g. 'hidden_dropout=0.1,max_position_embeddings=4096'."},
    )
    genre_conditioning: bool = field(
        default=False,
        metadata={"help": "Condition a new model on genres: the genre list comes from the training split's genre "
                  "column (rows without one, and unseen validation genres, get the null genre). A model or "
                  "checkpoint that is already conditional keeps its own list."},
    )
    text_conditioning: bool = field(
        default=False,
        metadata={"help": "Condition a new model on descriptions (the dataset's text column; rows without one get "
                  "the null description), read by --text_encoder through cross-attention. A model or checkpoint "
                  "that already reads text keeps its encoder."},
    )
    text_encoder: str | None = field(
        default=None,
        metadata={"help": "With --text_conditioning: the text encoder, a Hub name or folder (default "
                  "google-t5/t5-base, MusicGen's); frozen unless --config_overrides train_text_encoder=true."},
    )
    condition_dropout: float | None = field(
        default=None,
        metadata={"help": "Probability that a training example sees the null genre and description (classifier-free "
                  "guidance needs it); unset: the model's own, or 0.1 for a new conditional model."},
    )

    def __post_init__(self):
        if self.text_encoder is not None and not self.text_conditioning:
            raise ValueError("--text_encoder needs --text_conditioning")


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Tokenized dataset made by the data pipeline: a save_to_disk folder or a Hub id."},
    )
    train_split_name: str = field(default="train", metadata={"help": "Training split ('training' for FMA's split)."})
    validation_split_name: str = field(default="validation", metadata={"help": "Validation split."})
    segment_length: int = field(
        default=2048,
        metadata={"help": "Sequence positions per training crop and evaluation segment; a segment holds "
                  "segment_length - num_codebooks frames (2048 -> 2039 frames, about 23.7 s)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N validation segments (deterministic order)."}
    )


@dataclass
class AudioTrainingArguments:
    output_dir: str = field(metadata={"help": "Where checkpoints, the final and best models, logs and plots go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete a previous run's checkpoints and logs in output_dir and start over."}
    )
    do_train: bool = field(default=False, metadata={"help": "Train."})
    do_eval: bool = field(default=False, metadata={"help": "Evaluate on the validation split (alone: standalone)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint-N folder, or 'latest' for the newest one in output_dir."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Crops per micro-batch and process."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Segments per evaluation batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (matrices only)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: no clipping)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train for."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_steps: float = field(
        default=0.0, metadata={"help": "Linear warmup: a number of steps, or a fraction of max_steps when below 1."}
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "no, fp16 or bf16; unset: whatever accelerate launch / accelerate config says.",
                  "choices": MIXED_PRECISION_CHOICES},
    )
    label_smoothing_factor: float = field(
        default=0.0, metadata={"help": "Label smoothing of the training loss (evaluation never smooths)."}
    )
    codebook_loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One training-loss weight per codebook (a weighted mean)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps (with --do_eval); unset: only after training."}
    )
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    seed: int = field(default=42, metadata={"help": "Seed of the initialisation, data order and crops."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "Trackers for accelerate (tensorboard, wandb, ..., all, or none)."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model folder to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository (default: output_dir's name)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even where an accelerator is available."})

    def __post_init__(self):
        positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "max_steps", "logging_steps", "save_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"--eval_steps must be at least 1, got {self.eval_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be non-negative, got {self.warmup_steps}")
        if not (self.do_train or self.do_eval):
            raise ValueError("nothing to do: pass --do_train and/or --do_eval")

    @property
    def num_warmup_steps(self) -> int:
        return int(self.warmup_steps) if self.warmup_steps >= 1 else math.ceil(self.max_steps * self.warmup_steps)


def parse_arguments(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, AudioTrainingArguments) from argv, a leading YAML/JSON file first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_file_arguments(argv[0]) + argv[1:]
    return parse_dataclasses((ModelArguments, DataTrainingArguments, AudioTrainingArguments), argv,
                             description=__doc__.split("\n\n")[0])


def config_file_arguments(path: str) -> list[str]:
    """A YAML/JSON mapping of option -> value as command-line words, so later command-line options override it."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} not found")
    with open(path, encoding="utf-8") as file:
        options = yaml.safe_load(file) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values")
    words = []
    for name, value in options.items():
        if value is None:
            continue
        words.append(f"--{name}")
        if isinstance(value, bool):
            words.append(str(value).lower())
        elif isinstance(value, list):
            words.extend(str(item) for item in value)
        elif isinstance(value, dict):
            words.append(json.dumps(value))
        else:
            words.append(str(value))
    return words



# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Every user mistake is refused here, before any training, as one `error:` line and exit code 2."""
    try:
        model_args, data_args, training_args = parse_arguments(argv)
        check_named_sources(model_args, data_args)
    except ValueError as error:
        return report_error(str(error))
    treat_sigterm_as_interrupt()
    hide_transformers_bars()
    from training.loop import TrainingDiverged, after_interrupt, execute, setup_run  # torch, transformers: slow

    try:
        run = setup_run(model_args, data_args, training_args)
    except ValueError as error:
        return report_error(str(error))
    try:
        execute(run)
    except TrainingDiverged as error:
        if run.accelerator.is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if run.accelerator.is_main_process:
            print(after_interrupt(training_args), file=sys.stderr)
        return 130
    return 0


def check_named_sources(model_args, data_args) -> None:
    """A mistyped folder answers at once, before torch is imported (setup_run checks them again, for callers of
    run_training; a Hub look-up is made once)."""
    if model_args.model_name_or_path:
        check_model(model_args.model_name_or_path, "--model_name_or_path")
    if data_args.dataset_name:
        check_codes_dataset(data_args.dataset_name, "--dataset_name")


def run_training(model_args, data_args, training_args) -> dict:
    """Programmatic entry (the demo, tests): set up, train and/or evaluate; returns the results written to disk."""
    from training.loop import execute, setup_run

    return execute(setup_run(model_args, data_args, training_args))


if __name__ == "__main__":
    sys.exit(main())
