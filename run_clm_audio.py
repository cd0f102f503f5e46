"""Train and evaluate a music-hybrid language model on DAC codes, with Accelerate.

    python run_clm_audio.py --model_preset hybrid-small --dataset_name outputs/codes --output_dir outputs/run \
        --do_train --do_eval --max_steps 2000
    accelerate launch run_clm_audio.py recipes/hybrid-116m.yaml --dataset_name outputs/fma-codes
    python run_clm_audio.py --model_name_or_path outputs/run --dataset_name outputs/codes --output_dir outputs/eval \
        --do_eval

Arguments come from the command line or from a YAML/JSON file given first (later command-line options override it).
The same code runs on CPU, one GPU, DDP and FSDP: choose with `accelerate launch` / `accelerate config`.

Training is step-based. Each optimizer step sees per_device_train_batch_size x gradient_accumulation_steps x
processes random crops; its loss is token-weighted over all of them (each micro-batch contributes its summed
cross entropy divided by the token count of the whole step, counted across processes), so splitting a batch into
micro-batches or processes gives the same gradient as one large batch. Checkpoints are resumable exactly: the data
order is a function of (seed, sample index) and Accelerate restores weights, optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from checkpointing import (
    checkpoint_step,
    list_checkpoints,
    prepare_output_dir,
    replace_directory,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from configuration_music_hybrid import MusicHybridConfig
from evaluation import evaluate_model, format_metrics_table
from modeling_music_hybrid import IGNORE_INDEX, MusicHybridForCausalLM, weighted_codebook_mean
from training_data import CodesCollator, CodesWindows, RandomCropBatchSampler, frames_per_segment

LOG_HISTORY_FILE = "log_history.jsonl"
EVAL_RESULTS_FILE = "eval_results.json"
TRAIN_RESULTS_FILE = "train_results.json"
BEST_MODEL_DIR = "best"
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
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, AudioTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_file_arguments(argv[0]) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


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


def parse_config_overrides(text: str | None) -> dict:
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        overrides = json.loads(text)
    else:
        overrides = {}
        for item in text.split(","):
            name, separator, value = item.partition("=")
            if not separator:
                raise ValueError(f"--config_overrides item {item!r} is not field=value")
            try:
                overrides[name.strip()] = json.loads(value)
            except json.JSONDecodeError:
                overrides[name.strip()] = value.strip()
    known = inspect.signature(MusicHybridConfig.__init__).parameters
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"--config_overrides names unknown config fields {unknown}")
    return overrides


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss (or gradient) stopped being finite; the last good state has been saved."""


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args = parse_arguments(argv)
        run = setup_run(model_args, data_args, training_args)
    except ValueError as error:  # every user mistake is found here, before any training
        if PartialState().is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        execute(run)
    except TrainingDiverged as error:
        if run.accelerator.is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_training(model_args, data_args, training_args) -> dict:
    """Programmatic entry (the demo, tests): set up, train and/or evaluate; returns the results written to disk."""
    return execute(setup_run(model_args, data_args, training_args))


# --------------------------------------------------------------------------------------------------------------------
# Setup: every check that can fail on user input, before anything is trained
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    model_args: ModelArguments
    data_args: DataTrainingArguments
    training_args: AudioTrainingArguments
    accelerator: Accelerator
    config: MusicHybridConfig
    train_dataset: object | None
    validation_dataset: object | None
    resume_checkpoint: str | None


def setup_run(model_args, data_args, training_args) -> Run:
    log_with = [tracker for tracker in training_args.report_to if tracker != "none"] or None
    accelerator = Accelerator(
        cpu=training_args.use_cpu or not has_accelerator_device(),
        mixed_precision=training_args.mixed_precision,
        log_with=log_with,
        project_dir=training_args.output_dir,
    )
    if training_args.do_eval and not training_args.do_train and model_args.model_name_or_path is None:
        raise ValueError("evaluation alone needs --model_name_or_path (a trained model folder or Hub id)")
    splits, codec_identity = load_dataset_splits(data_args, training_args)
    config = build_config(model_args, training_args, codec_identity)
    check_dataset_matches_model(splits, config)

    resume_checkpoint = None
    if training_args.do_train:
        resume_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        if resume_checkpoint:
            checkpoint_config = MusicHybridConfig.from_pretrained(resume_checkpoint)
            check_same_codec(checkpoint_config.codec, codec_identity, f"checkpoint {resume_checkpoint}")
        prepare_output_dir(
            training_args.output_dir,
            training_args.overwrite_output_dir,
            training_args.resume_from_checkpoint is not None,
            accelerator.is_main_process,
        )
    else:
        os.makedirs(training_args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    return Run(
        model_args, data_args, training_args, accelerator, config,
        splits.get(data_args.train_split_name), splits.get(data_args.validation_split_name), resume_checkpoint,
    )


def has_accelerator_device() -> bool:
    """Whether torch sees a GPU-like device. Without one, Accelerate must be told `cpu=True`, or processes started by
    `accelerate launch --multi_gpu` on a CPU machine would each train alone instead of joining one gloo group."""
    device_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    if device_api is not None:
        return device_api.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def load_dataset_splits(data_args, training_args):
    """The needed splits of the tokenized dataset and its codec identity."""
    from data.dataset_io import load_codes_dataset

    name = data_args.dataset_name
    if name is None:
        raise ValueError("--dataset_name is required (a tokenized dataset folder or Hub id from the data pipeline)")
    if not os.path.exists(name) and (os.path.isabs(name) or name.startswith(".") or name.count("/") != 1):
        raise ValueError(f"dataset {name!r} not found: no such folder")
    dataset, codec_identity = load_codes_dataset(name)
    needed = [data_args.train_split_name] if training_args.do_train else []
    needed += [data_args.validation_split_name] if training_args.do_eval else []
    missing = [split for split in needed if split not in dataset]
    if missing:
        raise ValueError(f"dataset {name!r} has no split {missing[0]!r}; it has {sorted(dataset)}")
    splits = {split: dataset[split] for split in needed}
    if data_args.max_train_samples is not None and training_args.do_train:
        train = splits[data_args.train_split_name]
        splits[data_args.train_split_name] = train.select(range(min(data_args.max_train_samples, len(train))))
    return splits, codec_identity


def build_config(model_args, training_args, codec_identity) -> MusicHybridConfig:
    """Preset or saved config, plus overrides, training-loss options and the dataset's codec identity."""
    overrides = parse_config_overrides(model_args.config_overrides)
    overrides["label_smoothing"] = training_args.label_smoothing_factor
    if training_args.codebook_loss_weights is not None:
        overrides["codebook_loss_weights"] = training_args.codebook_loss_weights
    if model_args.model_name_or_path:
        saved = MusicHybridConfig.from_pretrained(model_args.model_name_or_path)
        check_same_codec(saved.codec, codec_identity, f"model {model_args.model_name_or_path}")
        config = MusicHybridConfig.from_dict({**saved.to_dict(), **overrides})
    else:
        config = MusicHybridConfig.from_preset(model_args.model_preset, **overrides)
    if codec_identity is not None:
        config.codec = codec_identity
    return config


def check_same_codec(trained_codec: dict | None, dataset_codec: dict | None, what: str) -> None:
    if trained_codec is None or dataset_codec is None:
        return
    if json.dumps(trained_codec, sort_keys=True) != json.dumps(dataset_codec, sort_keys=True):
        raise ValueError(
            f"the dataset's codes come from another codec than the one {what} was trained on "
            f"(dataset: {codec_summary(dataset_codec)}; {what}: {codec_summary(trained_codec)}); "
            "re-tokenize the audio with the model's codec or train a new model"
        )


def codec_summary(identity: dict) -> str:
    keys = ("backend", "model_id", "revision", "seed", "num_codebooks", "codebook_size")
    return ", ".join(f"{key}={identity.get(key)}" for key in keys if identity.get(key) is not None)


def check_dataset_matches_model(splits: dict, config) -> None:
    for split_name, split in splits.items():
        if len(split) == 0:
            raise ValueError(f"the {split_name!r} split is empty")
        num_codebooks = len(split[0]["codes"])
        if num_codebooks != config.num_codebooks:
            raise ValueError(
                f"the {split_name!r} split has {num_codebooks} codebooks per frame but the model has "
                f"{config.num_codebooks}: tokenize with a matching codec or choose a matching model"
            )
    if config.codec and config.codec.get("codebook_size") not in (None, config.codebook_size):
        raise ValueError(
            f"the dataset's codec has {config.codec['codebook_size']} codes per codebook, the model "
            f"{config.codebook_size}"
        )


# --------------------------------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """Progress saved in every checkpoint (registered with Accelerate next to weights, optimizer and RNG states)."""

    global_step: int = 0
    best_eval_loss: float = math.inf
    best_step: int | None = None
    pending_loss_sum: float = 0.0  # training losses since the last log line, so averages survive a resume
    pending_steps: int = 0
    log_history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def execute(run: Run) -> dict:
    accelerator, training_args = run.accelerator, run.training_args
    set_seed(training_args.seed)
    model = load_model(run.model_args, run.config)
    if training_args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    results = {"output_dir": training_args.output_dir}
    if training_args.do_train:
        results.update(train(run, model))
    elif training_args.do_eval:
        model = accelerator.prepare(model)
        evaluation = run_evaluation(run, model, step=None)
        write_json(os.path.join(training_args.output_dir, EVAL_RESULTS_FILE), evaluation, accelerator)
        results["eval"] = evaluation
    accelerator.end_training()
    return results


def load_model(model_args, config) -> MusicHybridForCausalLM:
    if model_args.model_name_or_path:
        return MusicHybridForCausalLM.from_pretrained(model_args.model_name_or_path, config=config)
    return MusicHybridForCausalLM(config)


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass. transformers 5.23 renamed
    gradient_checkpointing_enable to activation_checkpointing_enable; the old name warns from then on."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def train(run: Run, model) -> dict:
    accelerator, args, config = run.accelerator, run.training_args, run.config
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    # Not passed to prepare(): Accelerate would step it once per process, tying the schedule to the world size.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, args.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainingState()
    accelerator.register_for_checkpointing(scheduler, state)
    if run.resume_checkpoint:
        accelerator.load_state(run.resume_checkpoint)
        accelerator.print(f"Resumed from {run.resume_checkpoint} at step {state.global_step}")
    rewrite_log_history(args.output_dir, state.log_history, accelerator)
    run_config = {**asdict(run.model_args), **asdict(run.data_args), **asdict(args)}
    accelerator.init_trackers("music-hybrid", config={k: v for k, v in run_config.items() if is_scalar(v)})

    frames = frames_per_segment(run.data_args.segment_length, config.num_codebooks)
    sampler = RandomCropBatchSampler(
        list(run.train_dataset["num_frames"]), frames, args.per_device_train_batch_size, args.seed,
        accelerator.num_processes, accelerator.process_index,
        start_batch=state.global_step * args.gradient_accumulation_steps,
    )
    loader = DataLoader(
        CodesWindows(run.train_dataset, frames, config.pad_token_id),
        batch_sampler=sampler,
        collate_fn=CodesCollator(config),
        num_workers=args.dataloader_num_workers,
    )
    effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    accelerator.print(
        f"Training {accelerator.unwrap_model(model).num_parameters():,} parameters on {accelerator.num_processes} "
        f"process(es) ({accelerator.device}, mixed precision {accelerator.mixed_precision}): effective batch "
        f"{effective_batch} = {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
        f"accumulation x {accelerator.num_processes} processes, {run.data_args.segment_length} positions each, "
        f"{len(run.train_dataset)} training rows"
    )

    micro_batches = iter(loader)
    progress = tqdm(
        total=args.max_steps, initial=state.global_step, desc="training",
        disable=args.disable_tqdm or not accelerator.is_local_main_process,
    )
    last_evaluation = None
    start_time = time.time()
    start_step = state.global_step
    model.train()
    while state.global_step < args.max_steps:
        batches = [next(micro_batches) for _ in range(args.gradient_accumulation_steps)]
        loss, codebook_losses = accumulate_gradients(accelerator, model, batches, config)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
        grad_norm = float(grad_norm)
        if not math.isfinite(loss) or not (math.isfinite(grad_norm) or accelerator.mixed_precision == "fp16"):
            optimizer.zero_grad(set_to_none=True)
            path = save_last_good_state(accelerator, args, state, config)
            raise TrainingDiverged(
                f"training diverged at step {state.global_step + 1}: loss {loss}, gradient norm {grad_norm}; "
                f"the last good state (step {state.global_step}) is in {path}"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.pending_loss_sum += loss
        state.pending_steps += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}")

        step = state.global_step
        if step % args.logging_steps == 0 or step == args.max_steps:
            entry = {
                "step": step,
                "loss": state.pending_loss_sum / state.pending_steps,
                "codebook_loss": codebook_losses,
                "learning_rate": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "epoch": step * effective_batch / len(run.train_dataset),
            }
            state.pending_loss_sum, state.pending_steps = 0.0, 0
            record(entry, state, args.output_dir, accelerator)
        if run.training_args.do_eval and (
            (args.eval_steps and step % args.eval_steps == 0) or step == args.max_steps
        ):
            last_evaluation = evaluate_and_keep_best(run, model, state, step)
        if step % args.save_steps == 0 or step == args.max_steps:
            save_checkpoint(accelerator, args.output_dir, step, config, args.save_total_limit)
    progress.close()

    train_results = {
        "global_step": state.global_step,
        "num_processes": accelerator.num_processes,
        "effective_batch_size": effective_batch,
        "train_loss": last_logged(state.log_history, "loss"),
        "train_runtime_s": time.time() - start_time,
        "steps_this_run": state.global_step - start_step,
        "best_step": state.best_step,
        "best_eval_loss": state.best_eval_loss if state.best_step is not None else None,
    }
    if last_evaluation is None and run.training_args.do_eval:  # resumed at the end: the folder still needs one
        last_evaluation = run_evaluation(run, model, state.global_step)
    save_model_folder(run, model, args.output_dir, last_evaluation, state, as_files=True)
    write_json(os.path.join(args.output_dir, TRAIN_RESULTS_FILE), train_results, accelerator)
    if accelerator.is_main_process:
        write_plots(args.output_dir, state.log_history, last_evaluation)
        if args.push_to_hub:
            push_to_hub(args)
    accelerator.wait_for_everyone()
    return {"train": train_results, "eval": last_evaluation}


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only (nanoGPT's rule); Mamba's A_log and D are vectors, so they are never decayed."""
    decay = [parameter for parameter in model.parameters() if parameter.requires_grad and parameter.dim() >= 2]
    no_decay = [parameter for parameter in model.parameters() if parameter.requires_grad and parameter.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def accumulate_gradients(accelerator, model, batches: list[dict], config) -> tuple[float, list[float]]:
    """Backward over one optimizer step's micro-batches; returns the step's loss and per-codebook losses.

    The loss is token-weighted over the whole step: every micro-batch's per-codebook mean is turned back into a sum
    and divided by the codebook's valid-token count over all micro-batches and processes. Multiplying by the
    process count undoes DDP's gradient averaging, so the result equals one big batch's gradient. Every crop holds
    at least one real frame, so every codebook has valid tokens in every micro-batch.
    """
    step_counts = torch.stack([valid_token_counts(batch["labels"]) for batch in batches]).sum(0)
    step_counts = accelerator.reduce(step_counts.to(accelerator.device), reduction="sum").clamp(min=1)
    codebook_sums = torch.zeros(config.num_codebooks, device=accelerator.device)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            labels = batch["labels"].to(accelerator.device)
            output = model(input_ids=batch["input_ids"].to(accelerator.device), labels=labels)
            sums = output.codebook_losses * valid_token_counts(labels)
            loss = weighted_codebook_mean(sums / step_counts, config.codebook_loss_weights)
            accelerator.backward(loss * accelerator.num_processes)
        codebook_sums += sums.detach()
    codebook_losses = accelerator.reduce(codebook_sums, reduction="sum") / step_counts
    step_loss = weighted_codebook_mean(codebook_losses, config.codebook_loss_weights)
    return step_loss.item(), codebook_losses.tolist()


def valid_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """(K,) number of predicted positions per codebook; labels (B, K, S) with -100 where nothing is predicted."""
    return (labels[:, :, 1:] != IGNORE_INDEX).sum(dim=(0, 2)).float()


def save_last_good_state(accelerator, args, state, config) -> str:
    existing = [path for path in list_checkpoints(args.output_dir) if checkpoint_step(path) == state.global_step]
    if existing:  # the last good state was just saved: its optimizer and RNG states are the cleaner ones
        return existing[0]
    return save_checkpoint(accelerator, args.output_dir, state.global_step, config, args.save_total_limit)


def evaluate_and_keep_best(run: Run, model, state: TrainingState, step: int) -> dict:
    evaluation = run_evaluation(run, model, step)
    record({"step": step, **eval_log_entry(evaluation)}, state, run.training_args.output_dir, run.accelerator)
    if evaluation["mean_loss"] < state.best_eval_loss:
        state.best_eval_loss, state.best_step = evaluation["mean_loss"], step
        save_model_folder(run, model, os.path.join(run.training_args.output_dir, BEST_MODEL_DIR), evaluation, state)
    return evaluation


def run_evaluation(run: Run, model, step: int | None) -> dict:
    evaluation = evaluate_model(
        model,
        run.validation_dataset,
        segment_length=run.data_args.segment_length,
        batch_size=run.training_args.per_device_eval_batch_size,
        max_segments=run.data_args.max_eval_samples,
        accelerator=run.accelerator,
        progress=not run.training_args.disable_tqdm,
    )
    evaluation["step"] = step
    run.accelerator.print(("" if step is None else f"Validation at step {step}:\n") + format_metrics_table(evaluation))
    return evaluation


def eval_log_entry(evaluation: dict) -> dict:
    return {
        "eval_loss": evaluation["mean_loss"],
        "eval_codebook_loss": evaluation["codebook_loss"],
        "eval_top1": evaluation["mean_top1"],
        "eval_top5": evaluation["mean_top5"],
        "eval_perplexity": evaluation["perplexity"],
    }


def record(entry: dict, state: TrainingState, output_dir: str, accelerator) -> None:
    """Keep a log entry in the training state (checkpointed), append it to the JSONL log and send it to trackers."""
    state.log_history.append(entry)
    accelerator.log({key: value for key, value in entry.items() if is_scalar(value)}, step=entry["step"])
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, LOG_HISTORY_FILE), "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
        if "loss" in entry:
            tqdm.write(f"step {entry['step']}: loss {entry['loss']:.4f}, lr {entry['learning_rate']:.2e}, "
                       f"grad norm {entry['grad_norm']:.3f}")


def rewrite_log_history(output_dir: str, log_history: list, accelerator) -> None:
    """Start the log with exactly the checkpoint's entries: none for a fresh run, and after a resume not the steps a
    killed run logged past its last checkpoint."""
    if accelerator.is_main_process:
        path = os.path.join(output_dir, LOG_HISTORY_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(entry) + "\n" for entry in log_history)
        os.replace(path + ".tmp", path)


def save_model_folder(run: Run, model, directory: str, evaluation: dict | None, state, as_files: bool = False):
    """save_pretrained (weights, config with codec identity, generation config, code files), model card, metrics.

    Written to a temporary folder first; then either swapped in as a whole or, for output_dir itself (which also
    holds checkpoints and logs), moved in file by file.
    """
    from model_card import write_model_card

    accelerator = run.accelerator
    temporary = directory.rstrip("/") + ".saving" if not as_files else os.path.join(directory, ".saving")
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every process takes part
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        unwrapped.save_pretrained(temporary, state_dict=state_dict, save_function=accelerator.save)
        if evaluation is not None:
            write_json(os.path.join(temporary, EVAL_RESULTS_FILE), evaluation)
        write_model_card(
            temporary,
            config=unwrapped.config,
            num_parameters=unwrapped.num_parameters(),
            training_arguments={**asdict(run.model_args), **asdict(run.data_args), **asdict(run.training_args)},
            evaluation=evaluation,
            dataset_name=run.data_args.dataset_name,
            global_step=state.global_step,
        )
        if as_files:
            for name in os.listdir(temporary):
                os.replace(os.path.join(temporary, name), os.path.join(directory, name))
            os.rmdir(temporary)
        else:
            replace_directory(temporary, directory)
    accelerator.wait_for_everyone()


def write_plots(output_dir: str, log_history: list, evaluation: dict | None) -> None:
    from plots import plot_codebook_metrics, plot_training_curves

    plot_training_curves(log_history, os.path.join(output_dir, "training_curves.png"))
    if evaluation is not None:
        plot_codebook_metrics(evaluation, os.path.join(output_dir, "codebook_metrics.png"))


def push_to_hub(args) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
    create_repo(repo_id, exist_ok=True)
    upload_folder(
        repo_id=repo_id, folder_path=args.output_dir, ignore_patterns=["checkpoint-*", "*.tmp", "*.old", ".saving"]
    )


def write_json(path: str, content: dict, accelerator=None) -> None:
    if accelerator is not None and not accelerator.is_main_process:
        return
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(content, file, indent=2)
    os.replace(path + ".tmp", path)


def last_logged(log_history: list, key: str):
    return next((entry[key] for entry in reversed(log_history) if key in entry), None)


def is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool))


if __name__ == "__main__":
    sys.exit(main())
