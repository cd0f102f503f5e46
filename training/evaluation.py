"""Validation metrics over deterministic segments, comparable across runs and models.

Every validation track is cut into consecutive, non-overlapping windows of (segment_length - K) frames (the last
one padded), ordered by (track_id, start frame). The segments depend only on the dataset and the segment length, so
two checkpoints evaluated on them can be compared segment by segment (paired tests on `segment_codebook_loss`).

Losses are plain cross entropy (no label smoothing, whatever the model was trained with), summed over every valid
position of a codebook and divided by their count, so the numbers are token-weighted and independent of batching.

A conditional model is scored with each segment's true conditions (the null value where the track has none the
model knows: a genre outside its list, no description), and once more per condition with that condition null: the
paired difference, null minus true, is the information the condition gives about the codes ("genre information",
"text information", nats per token), with bootstrap intervals over the segments that have a value of their own.

Long range: the losses are also kept by position in the segment, in POSITION_BUCKETS equal buckets of the segment's
positions (a predicted token at position j of an S-position segment falls in bucket j * POSITION_BUCKETS // S), per
segment too, so that a model with more memory can be compared with another bucket by bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from comparison.paired_statistics import compare_losses
from modeling_music_hybrid import IGNORE_INDEX
from training.conditions import training_conditions
from training.crops import CodesCollator, CodesWindows, ConditionWindows, condition_arguments, frames_per_segment

TOP_K = 5
POSITION_BUCKETS = 8
SUM_ROWS = 4 + 2 * POSITION_BUCKETS  # the rows of `segment_sums`


@dataclass(frozen=True)
class Segment:
    track_id: str
    start_frame: int  # in the track, so a track stored as several rows still gets one id per window
    row: int
    row_offset: int

    @property
    def segment_id(self) -> str:
        return f"{self.track_id}:{self.start_frame}"


def validation_segments(dataset, segment_length: int, num_codebooks: int, max_segments: int | None = None):
    """The fixed evaluation windows of `dataset` in (track_id, start frame) order; the first `max_segments` if given."""
    frames = frames_per_segment(segment_length, num_codebooks)
    columns = dataset.select_columns(["track_id", "start_frame", "num_frames"]).to_dict()
    segments = [
        Segment(str(track_id), int(row_start) + offset, row, offset)
        for row, (track_id, row_start, num_frames) in enumerate(
            zip(columns["track_id"], columns["start_frame"], columns["num_frames"])
        )
        for offset in range(0, int(num_frames), frames)
    ]
    segments.sort(key=lambda segment: (segment.track_id, segment.start_frame))
    return segments if max_segments is None else segments[:max_segments]


def evaluate_model(
    model,
    validation_dataset,
    segment_length: int = 2048,
    batch_size: int = 8,
    max_segments: int | None = None,
    accelerator=None,
    progress: bool = True,
) -> dict:
    """Per-codebook loss, top-1 and top-5 accuracy of `model` on the validation segments, as a JSON-able dict;
    for a conditional model also "<condition>_information" per condition ("genre_information",
    "text_information"; see `condition_information`).

    With an accelerator, process r evaluates segments r, r + W, ... (padded to equal counts so that wrapped models
    run the same number of forward passes everywhere) and the per-segment sums are gathered on every process.
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator else model
    config = unwrapped.config
    num_codebooks = config.num_codebooks
    segments = validation_segments(validation_dataset, segment_length, num_codebooks, max_segments)
    if not segments:
        raise ValueError("the validation split has no frames to evaluate")
    num_processes = accelerator.num_processes if accelerator else 1
    process_index = accelerator.process_index if accelerator else 0
    device = accelerator.device if accelerator else next(model.parameters()).device

    per_process = math.ceil(len(segments) / num_processes)
    local_indices = [process_index + num_processes * i for i in range(per_process)]
    padding = Segment("", 0, segments[0].row, 0)  # evaluated, then dropped: equal counts on every process
    local_segments = [segments[i] if i < len(segments) else padding for i in local_indices]
    keys = [(segment.row, segment.row_offset) for segment in local_segments]
    windows = CodesWindows(validation_dataset, frames_per_segment(segment_length, num_codebooks), config.pad_token_id)
    conditions = training_conditions(validation_dataset, unwrapped)
    if conditions:
        windows = ConditionWindows(windows, conditions)
    # Its own generator: a DataLoader iterator draws a seed, which from the global one would shift the dropout
    # masks of the training steps after every evaluation.
    loader = DataLoader(
        windows, sampler=keys, batch_size=batch_size, collate_fn=CodesCollator(config, conditions),
        generator=torch.Generator(),
    )

    was_training = model.training
    model.eval()
    local_sums = []
    is_main = accelerator.is_main_process if accelerator else True
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", disable=not (progress and is_main)):
            input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            sums = segment_sums(model(input_ids=input_ids, **condition_arguments(batch, device)).logits, labels)
            for condition in conditions:  # the cross entropy with this condition null, as one more row
                null_arguments = condition_arguments(batch, device, leave_out=condition.name)
                null_sums = segment_sums(model(input_ids=input_ids, **null_arguments).logits, labels)
                sums = torch.cat([sums, null_sums[:, :1]], dim=1)
            local_sums.append(sums)
    model.train(was_training)

    sums = torch.cat(local_sums)  # (per_process, SUM_ROWS + one row per condition, K)
    if accelerator:
        sums = accelerator.gather(sums.contiguous())
    # gathered rows are process-major: row r * per_process + i is segment r + num_processes * i
    order = [r + num_processes * i for r in range(num_processes) for i in range(per_process)]
    by_segment = torch.empty_like(sums)
    by_segment[order] = sums
    by_segment = by_segment[: len(segments)].double().cpu()
    result = metrics_from_sums(by_segment[:, :SUM_ROWS], segments, segment_length)
    for index, condition in enumerate(conditions):
        known = condition.known_rows()
        null_sums = by_segment[:, SUM_ROWS + index]
        result[f"{condition.name}_information"] = condition_information(
            by_segment[:, :SUM_ROWS], null_sums, [known[segment.row] for segment in segments], condition.name,
            condition.described_as,
        )
    return result


def segment_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, SUM_ROWS, K): summed cross entropy, valid-token count, top-1 hits and top-k hits of each segment and
    codebook, then the summed cross entropy and the valid-token count of each position bucket.

    logits (B, K, S, V) at position i predict the input at i + 1, so they are compared with labels shifted by one.
    """
    logits = logits[:, :, :-1].float()
    targets = labels[:, :, 1:]
    valid = targets != IGNORE_INDEX
    safe_targets = targets.clamp(min=0)
    cross_entropy = F.cross_entropy(logits.transpose(1, -1), safe_targets.transpose(1, -1), reduction="none")
    cross_entropy = cross_entropy.transpose(1, -1) * valid
    top = logits.topk(TOP_K, dim=-1).indices
    hits = top == safe_targets.unsqueeze(-1)
    top1 = hits[..., 0] & valid
    topk = hits.any(dim=-1) & valid
    totals = torch.stack([cross_entropy.sum(-1), valid.sum(-1), top1.sum(-1), topk.sum(-1)], dim=1).float()
    positions = torch.arange(1, labels.shape[2], device=labels.device)  # of the predicted tokens
    buckets = F.one_hot(positions * POSITION_BUCKETS // labels.shape[2], POSITION_BUCKETS).float()
    by_bucket = [torch.matmul(values.float(), buckets).transpose(1, 2) for values in (cross_entropy, valid)]
    return torch.cat([totals, *by_bucket], dim=1)


def metrics_from_sums(sums: torch.Tensor, segments: list[Segment], segment_length: int) -> dict:
    """The metrics dict (see `evaluate_model`). The bucket entries: `bucket_positions` ([first, last] positions of
    each bucket), `bucket_codebook_loss` (buckets, K) and `bucket_mean_loss`, and per segment
    `segment_bucket_codebook_loss` (segments, buckets, K; 0 where a bucket holds no token of a codebook, e.g. the
    padded end of a track's last segment) with `segment_bucket_num_tokens` (segments, buckets; valid tokens of
    every codebook) as its weights."""
    loss_sum, count, top1, topk = sums[:, :4].unbind(dim=1)  # each (num_segments, K)
    # each (num_segments, buckets, K)
    bucket_loss_sum, bucket_count = sums[:, 4:].unflatten(1, (2, POSITION_BUCKETS)).unbind(dim=1)
    bucket_loss = bucket_loss_sum.sum(0) / bucket_count.sum(0).clamp(min=1)
    total = count.sum(0)
    codebook_loss = loss_sum.sum(0) / total
    mean_loss = codebook_loss.mean().item()
    return {
        "segment_length": segment_length,
        "num_segments": len(segments),
        "segment_ids": [segment.segment_id for segment in segments],
        "codebook_loss": codebook_loss.tolist(),
        "codebook_top1": (top1.sum(0) / total).tolist(),
        f"codebook_top{TOP_K}": (topk.sum(0) / total).tolist(),
        "mean_loss": mean_loss,
        "mean_top1": (top1.sum(0) / total).mean().item(),
        f"mean_top{TOP_K}": (topk.sum(0) / total).mean().item(),
        "perplexity": math.exp(mean_loss),
        "num_tokens": int(total.sum().item()),
        "segment_codebook_loss": (loss_sum / count).tolist(),
        "segment_num_frames": count[:, 0].long().tolist(),  # every codebook predicts each real frame once
        "position_buckets": POSITION_BUCKETS,
        "bucket_positions": bucket_positions(segment_length),
        "bucket_codebook_loss": bucket_loss.tolist(),
        "bucket_mean_loss": bucket_loss.mean(1).tolist(),
        "segment_bucket_codebook_loss": (bucket_loss_sum / bucket_count.clamp(min=1)).tolist(),
        "segment_bucket_num_tokens": bucket_count.sum(-1).long().tolist(),
    }


def bucket_positions(segment_length: int) -> list[list[int]]:
    """[first, last] position of each bucket's predicted tokens (positions 1 .. segment_length - 1)."""
    edges = [max(1, -(-b * segment_length // POSITION_BUCKETS)) for b in range(POSITION_BUCKETS + 1)]
    return [[edges[b], edges[b + 1] - 1] for b in range(POSITION_BUCKETS)]


def condition_information(sums: torch.Tensor, null_loss_sums: torch.Tensor, known: list[bool], name: str,
                          described_as: str) -> dict:
    """Per-codebook loss with the true and with the null value of condition `name` over the segments that have a
    value of their own (`known`), and their paired difference (null - true: positive when the condition helps) with
    bootstrap intervals over segments. sums: (segments, SUM_ROWS, K) from evaluate_model; null_loss_sums:
    (segments, K), the summed cross entropy with the condition null; described_as: the tables' word for a value."""
    keep = torch.tensor(known, dtype=torch.bool)
    sums, null_loss_sums = sums[keep], null_loss_sums[keep]
    if sums.shape[0] == 0:
        return {"num_segments": 0, "described_as": described_as}
    count = sums[:, 1]
    true_losses, null_losses = (sums[:, 0] / count).numpy(), (null_loss_sums / count).numpy()
    weights = count[:, 0].numpy()  # every codebook predicts each real frame once
    per_codebook = compare_losses(true_losses, null_losses, weights=weights)
    mean = compare_losses(true_losses.mean(1, keepdims=True), null_losses.mean(1, keepdims=True), weights=weights)
    total = count.sum(0)
    return {
        "num_segments": int(sums.shape[0]),
        "described_as": described_as,
        f"codebook_loss_true_{name}": (sums[:, 0].sum(0) / total).tolist(),
        f"codebook_loss_null_{name}": (null_loss_sums.sum(0) / total).tolist(),
        "codebook_information": per_codebook.difference,
        "codebook_information_ci": [list(pair) for pair in zip(per_codebook.ci_low, per_codebook.ci_high, strict=True)],
        "codebook_p_value_holm": per_codebook.p_value_holm,
        "mean_information": mean.difference[0],
        "mean_information_ci": [mean.ci_low[0], mean.ci_high[0]],
        "confidence": per_codebook.confidence,
    }


def format_metrics_table(result: dict) -> str:
    """The published table: one row per codebook plus the mean, columns loss / top-1 / top-5 (markdown)."""
    lines = ["| codebook | loss | top-1 | top-5 |", "|---:|---:|---:|---:|"]
    rows = zip(result["codebook_loss"], result["codebook_top1"], result["codebook_top5"])
    for codebook, (loss, top1, top5) in enumerate(rows):
        lines.append(f"| {codebook} | {loss:.3f} | {top1:.1%} | {top5:.1%} |")
    lines.append(f"| mean | {result['mean_loss']:.3f} | {result['mean_top1']:.1%} | {result['mean_top5']:.1%} |")
    lines.append("")
    lines.append(
        f"Perplexity exp(mean loss) = {result['perplexity']:.2f} over {result['num_segments']} segments of "
        f"{result['segment_length']} positions (cross entropy without label smoothing)."
    )
    for key, information in result.items():
        if key.endswith("_information"):
            lines += ["", format_condition_information(information, key.removesuffix("_information"))]
    return "\n".join(lines)


def format_condition_information(information: dict, name: str) -> str:
    """A condition's information table: loss with the true and the null value, their difference and its interval."""
    described_as = information.get("described_as", name)
    title = f"{name.capitalize()} information"
    if not information["num_segments"]:
        return f"{title}: no validation segment has a {described_as} the model knows."
    confidence = f"{information['confidence']:.0%}"
    true_losses, null_losses = information[f"codebook_loss_true_{name}"], information[f"codebook_loss_null_{name}"]
    lines = [
        f"| codebook | loss, true {described_as} | loss, null {described_as} | {name} information (nats) | "
        f"{confidence} interval |",
        "|---:|---:|---:|---:|---:|",
    ]
    rows = zip(true_losses, null_losses, information["codebook_information"], information["codebook_information_ci"],
               strict=True)
    for codebook, (true_loss, null_loss, difference, (low, high)) in enumerate(rows):
        interval = f"[{low:+.4f}, {high:+.4f}]"
        lines.append(f"| {codebook} | {true_loss:.3f} | {null_loss:.3f} | {difference:+.4f} | {interval} |")
    true_mean, null_mean = sum(true_losses) / len(true_losses), sum(null_losses) / len(null_losses)
    low, high = information["mean_information_ci"]
    difference = information["mean_information"]
    lines.append(f"| mean | {true_mean:.3f} | {null_mean:.3f} | {difference:+.4f} | [{low:+.4f}, {high:+.4f}] |")
    lines += ["", f"{title} = loss with the null {described_as} - loss with the true {described_as}, paired over "
              f"{information['num_segments']} segments whose {described_as} the model knows (bootstrap intervals)."]
    return "\n".join(lines)
