"""One training or evaluation run of run_clm_audio.py: setup (every check on user input, before any work),
the Accelerate training loop with exact resume, evaluation, and the saved model folder.

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

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from cli.paths import check_codes_dataset, load_checkpoint_config, not_found
from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import IGNORE_INDEX, MusicHybridForCausalLM, weighted_codebook_mean
from training.checkpoints import (
    LOG_HISTORY_FILE,
    check_output_dir,
    forget_unsaved_steps,
    checkpoint_step,
    list_checkpoints,
    prepare_output_dir,
    replace_directory,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from training.conditions import configure_conditions, training_conditions
from training.crops import (
    CodesCollator,
    CodesWindows,
    ConditionWindows,
    RandomCropBatchSampler,
    condition_arguments,
    frames_per_segment,
)
from training.evaluation import evaluate_model, format_metrics_table

EVAL_RESULTS_FILE = "eval_results.json"
TRAIN_RESULTS_FILE = "train_results.json"
BEST_MODEL_DIR = "best"


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




class TrainingDiverged(RuntimeError):
    """The loss (or gradient) stopped being finite; the last good state has been saved."""


# --------------------------------------------------------------------------------------------------------------------
# Setup: every check that can fail on user input, before anything is trained
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    model_args: object  # run_clm_audio.ModelArguments
    data_args: object  # run_clm_audio.DataTrainingArguments
    training_args: object  # run_clm_audio.AudioTrainingArguments
    accelerator: Accelerator
    config: MusicHybridConfig
    train_dataset: object | None
    validation_dataset: object | None
    resume_checkpoint: str | None


def setup_run(model_args, data_args, training_args) -> Run:
    """Check everything the user gave (every check raises ValueError, before anything is written), then create
    output_dir, removing a previous run's outputs only with --overwrite_output_dir."""
    log_with = [tracker for tracker in training_args.report_to if tracker != "none"] or None
    accelerator = Accelerator(
        cpu=training_args.use_cpu or not has_accelerator_device(),
        mixed_precision=training_args.mixed_precision,
        log_with=log_with,
        project_dir=training_args.output_dir,
    )
    output_dir, overwrite = training_args.output_dir, training_args.overwrite_output_dir
    if training_args.disable_tqdm:  # also the bars of datasets and of save_pretrained ("Writing model shards")
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    if training_args.do_eval and not training_args.do_train and model_args.model_name_or_path is None:
        raise ValueError("evaluation alone needs --model_name_or_path (a trained model folder or Hub id)")
    splits, codec_identity = load_dataset_splits(data_args, training_args)
    config = build_config(model_args, training_args, codec_identity)
    check_dataset_matches_model(splits, config)

    resume_checkpoint = None
    checkpoint_config = None
    if training_args.do_train:
        resume_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, output_dir, overwrite)
    if resume_checkpoint:
        checkpoint_config = MusicHybridConfig.from_pretrained(resume_checkpoint)
        if model_args.genre_conditioning and checkpoint_config.genres is None:
            raise ValueError(
                f"checkpoint {resume_checkpoint} was trained without genre conditioning: resume without "
                "--genre_conditioning, or start a new run"
            )
        if model_args.text_conditioning and checkpoint_config.text_encoder is None:
            raise ValueError(
                f"checkpoint {resume_checkpoint} was trained without text conditioning: resume without "
                "--text_conditioning, or start a new run"
            )
    # Before the resume check: a conditional checkpoint's genres and encoder are part of the settings it compares.
    condition_lines = configure_conditions(config, model_args, splits, data_args.train_split_name, checkpoint_config)
    if training_args.do_train:
        if resume_checkpoint:
            check_resumable(resume_checkpoint, config)
        elif training_args.resume_from_checkpoint == "latest":
            accelerator.print(f"No checkpoint in {output_dir}: training starts from scratch.")
    check_output_dir(output_dir, overwrite, resuming=resume_checkpoint is not None)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, overwrite and training_args.do_train, resuming=resume_checkpoint is not None)
    for line in condition_lines:
        accelerator.print(line)
    if training_args.do_train and accelerator.is_main_process:
        track_frames = list(splits[data_args.train_split_name]["num_frames"])
        for line in setting_warnings(training_args, data_args.segment_length, track_frames, config):
            print(line, file=sys.stderr)
    accelerator.wait_for_everyone()
    return Run(
        model_args, data_args, training_args, accelerator, config,
        splits.get(data_args.train_split_name), splits.get(data_args.validation_split_name), resume_checkpoint,
    )


def setting_warnings(training_args, segment_length: int, track_frames: list[int], config) -> list[str]:
    """Settings that train, but hardly: a warmup as long as the run, crops that are mostly padding."""
    lines = []
    warmup, steps = training_args.num_warmup_steps, training_args.max_steps
    if warmup >= steps:
        lines.append(
            f"warning: --warmup_steps {warmup} is not below --max_steps {steps}: the learning rate only climbs to "
            f"{steps / warmup:.0%} of --learning_rate {training_args.learning_rate:g} (a fraction such as 0.05 "
            "warms up over that share of the steps)"
        )
    frames = frames_per_segment(segment_length, config.num_codebooks)
    audio_share = float(np.minimum(track_frames, frames).mean()) / frames
    if audio_share < 0.5:
        fitting = int(np.median(track_frames)) + config.num_codebooks
        lines.append(
            f"warning: the training tracks are shorter than a crop: {audio_share:.0%} of a {frames}-frame crop is "
            f"audio on average, the rest padding (computed, not learned from); --segment_length {fitting} fits the "
            "median track"
        )
    return lines


def check_resumable(checkpoint: str, config) -> None:
    """The checkpoint must come from the same codec and architecture as this run, or its weights would not load."""
    checkpoint_config = MusicHybridConfig.from_pretrained(checkpoint)
    check_same_codec(checkpoint_config.codec, config.codec, f"checkpoint {checkpoint}")
    saved, requested = comparable_settings(checkpoint_config), comparable_settings(config)
    differing = [name for name in sorted(set(saved) | set(requested)) if saved.get(name) != requested.get(name)]
    if differing:
        details = "; ".join(f"{name}: {saved.get(name)!r} there, {requested.get(name)!r} now" for name in differing[:3])
        raise ValueError(
            f"checkpoint {checkpoint} was made with other model settings ({details}): resume with its "
            "--model_preset / --model_name_or_path and --config_overrides, or start over with --overwrite_output_dir"
        )


def comparable_settings(config) -> dict:
    """The config as JSON values, without what says only where and with what it was saved."""
    bookkeeping = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype"}
    return {name: value for name, value in json.loads(config.to_json_string()).items() if name not in bookkeeping}


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
    check_codes_dataset(name, "--dataset_name")
    try:
        dataset, codec_identity = load_codes_dataset(name)
    except ValueError as error:
        if os.path.exists(name):
            raise
        raise not_found(name, "--dataset_name", "codes dataset", error) from None
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
        saved = load_checkpoint_config(model_args.model_name_or_path, "--model_name_or_path")
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


def after_interrupt(training_args) -> str:
    """Leave complete checkpoints or nothing (a checkpoint is renamed into place only when whole), and say which."""
    output_dir = training_args.output_dir
    if not training_args.do_train:
        return f"interrupted: nothing was written to {output_dir}"
    if not forget_unsaved_steps(output_dir):
        return (f"interrupted before the first checkpoint: nothing kept in {output_dir}; the same command starts "
                "over (--save_steps sets how often a checkpoint is saved)")
    checkpoints = list_checkpoints(output_dir)
    return f"interrupted: the last complete checkpoint is {checkpoints[-1]}; continue: --resume_from_checkpoint latest"


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
    conditions = training_conditions(run.train_dataset, accelerator.unwrap_model(model))
    conditional = bool(conditions)
    sampler = RandomCropBatchSampler(
        list(run.train_dataset["num_frames"]), frames, args.per_device_train_batch_size, args.seed,
        accelerator.num_processes, accelerator.process_index,
        start_batch=state.global_step * args.gradient_accumulation_steps,
        condition_dropout=config.condition_dropout if conditional else None,
    )
    windows = CodesWindows(run.train_dataset, frames, config.pad_token_id)
    if conditional:
        windows = ConditionWindows(windows, conditions)
    loader = DataLoader(
        windows,
        batch_sampler=sampler,
        collate_fn=CodesCollator(config, conditions),
        num_workers=args.dataloader_num_workers,
        # Creating an iterator draws a worker base seed; from torch's global generator it would shift every dropout
        # mask after a resume (the iterator is made after load_state restored that generator). The crops use no RNG.
        generator=torch.Generator(),
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
            output = model(
                input_ids=batch["input_ids"].to(accelerator.device),
                labels=labels,
                **condition_arguments(batch, accelerator.device),
            )
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
    accelerator = run.accelerator
    temporary = directory.rstrip("/") + ".saving" if not as_files else os.path.join(directory, ".saving")
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every process takes part
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            write_model_folder(run, unwrapped, temporary, state_dict, evaluation, state)
        except BaseException:  # interrupted: the previous folder (if any) stays, and no half-written one
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        if as_files:
            for name in os.listdir(temporary):
                os.replace(os.path.join(temporary, name), os.path.join(directory, name))
            os.rmdir(temporary)
        else:
            replace_directory(temporary, directory)
    accelerator.wait_for_everyone()


def write_model_folder(run: Run, unwrapped, folder: str, state_dict, evaluation: dict | None, state) -> None:
    from training.model_card import write_model_card

    unwrapped.save_pretrained(folder, state_dict=state_dict, save_function=run.accelerator.save)
    if evaluation is not None:
        write_json(os.path.join(folder, EVAL_RESULTS_FILE), evaluation)
    write_model_card(
        folder,
        config=unwrapped.config,
        num_parameters=unwrapped.num_parameters(),
        training_arguments={**asdict(run.model_args), **asdict(run.data_args), **asdict(run.training_args)},
        evaluation=evaluation,
        dataset_name=run.data_args.dataset_name,
        global_step=state.global_step,
        base_model=run.model_args.model_name_or_path,
    )


def write_plots(output_dir: str, log_history: list, evaluation: dict | None) -> None:
    from training.plots import plot_codebook_metrics, plot_training_curves

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
