"""Judge the audio, not only the tokens: every model continues the same validation prompts with the same seeds, the
codec decodes the samples, and the Frechet Audio Distance to the validation audio (the validation codes decoded with
the same codec) is reported per model with a bootstrap interval over samples, between its floor (two halves of the
validation audio) and its ceiling (the decoded codes of a context-free bigram sampler), so that a number can be
read."""

import sys
from pathlib import Path

import numpy as np
import torch

from comparison.baselines import sample_bigram_codes
from metrics.audio_embeddings import embedding_for, fad_floor, fad_with_interval


def validation_prompts(validation_dataset, num_samples, prompt_frames):
    """(num_samples, K, prompt_frames) codes: the opening of validation track i % tracks for sample i."""
    openings = [np.asarray(codes, dtype=np.int64)[:, :prompt_frames] for codes in validation_dataset["codes"]]
    openings = [opening for opening in openings if opening.shape[1] == prompt_frames]
    if not openings:
        raise ValueError(f"no validation track is longer than the {prompt_frames}-frame prompt")
    return torch.from_numpy(np.stack([openings[i % len(openings)] for i in range(num_samples)]))


def reference_audio(validation_dataset, codec, max_clips=16):
    """The validation audio as the codec reproduces it: up to `max_clips` validation rows decoded."""
    rows = validation_dataset.select(range(min(max_clips, len(validation_dataset))))
    return [codec.decode(torch.as_tensor(np.asarray(codes, dtype=np.int64))[None])[0] for codes in rows["codes"]]


def generate_continuations(model, prompts, new_frames, seed, batch_size=8):
    """(N, K, new_frames) new codes after each prompt; the seed makes every model draw from the same noise."""
    torch.manual_seed(seed)
    continuations = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size].to(model.device)
        codes = model.generate(batch, max_new_tokens=new_frames, num_return_sequences=1)
        continuations.append(codes[:, :, batch.shape[2] :].cpu())
    return torch.cat(continuations)


def fad_of_models(models, validation_dataset, codec, num_samples, new_frames, prompt_frames, seed=0,
                  num_resamples=200, confidence=0.95, train_dataset=None):
    """{"embedding", "note", "floor", "ceiling", "models": {name: fad dict}, "audio": {name: [waveforms]}, ...}.

    models: {name: MusicHybridForCausalLM}; all continue the same prompts under the same seed. The ceiling's
    sampler is fitted on `train_dataset`'s codes (the validation codes when None, as "ceiling" then says)."""
    name, note, embed = embedding_for(codec)
    reference = embed(reference_audio(validation_dataset, codec))
    prompts = validation_prompts(validation_dataset, num_samples, prompt_frames)
    report = {"embedding": name, "note": note, "num_samples": num_samples, "new_frames": new_frames,
              "prompt_frames": prompt_frames, "seed": seed, "models": {}, "audio": {}}
    report["floor"] = {"fad": fad_floor(reference), "what": "two halves of the validation audio"}
    fitted_on = "validation" if train_dataset is None else "training"
    sampled = sample_bigram_codes((validation_dataset if train_dataset is None else train_dataset)["codes"], num_samples, new_frames,
                                  codec.identity["codebook_size"], seed=seed)
    report["ceiling"] = {**fad_with_interval(embed(list(codec.decode(sampled))), reference, num_resamples=0, seed=seed),
                         "what": f"decoded codes of a context-free bigram sampler fitted on the {fitted_on} codes"}
    for model_name, model in models.items():
        print(f"{model_name}: {num_samples} samples of {new_frames} frames, then the FAD", file=sys.stderr, flush=True)
        audio = list(codec.decode(generate_continuations(model, prompts, new_frames, seed)))
        report["audio"][model_name] = audio
        report["models"][model_name] = fad_with_interval(
            embed(audio), reference, num_resamples=num_resamples, confidence=confidence, seed=seed
        )
    return report


def checkpoint_of(source):
    """The checkpoint folder of a compare_models source: the folder itself, or the one an eval_results.json sits in
    (run_clm_audio saves the model next to its evaluation)."""
    folder = Path(source).parent if str(source).endswith(".json") else Path(source)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--generate needs a checkpoint for every model; {source} has no config.json beside it")
    return folder


def fad_of_checkpoints(sources, names, validation_data, split, samples_dir, num_samples, seconds, prompt_seconds,
                       seed=0, num_resamples=200, confidence=0.95):
    """fad_of_models for checkpoints (folders, or eval_results.json beside one) on a codes dataset; every model must
    have been trained on the codec of that dataset. The samples are written to samples_dir/NAME_000.wav, ..."""
    from data.dataset_io import load_codes_dataset
    from generation.streaming_wav import write_wav
    from modeling_music_hybrid import MusicHybridForCausalLM
    from processing_music_hybrid import load_codec

    folders = [checkpoint_of(source) for source in sources]
    dataset, identity = load_codes_dataset(validation_data)
    if split not in dataset:
        raise ValueError(f"{validation_data} has no split {split!r}; it has {sorted(dataset)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for name, folder in zip(names, folders, strict=True):
        model = MusicHybridForCausalLM.from_pretrained(folder).to(device).eval()
        if model.config.codec is not None and model.config.codec != identity:
            raise ValueError(f"{folder} was trained on codes of codec {model.config.codec}, the validation data uses "
                             f"{identity}: its samples cannot be compared with that audio")
        models[name] = model
    codec = load_codec(identity, device=device, location=validation_data)
    frame_rate = identity["sample_rate"] / identity["hop_length"]
    report = fad_of_models(models, dataset[split], codec, num_samples, new_frames=max(1, round(seconds * frame_rate)),
                           prompt_frames=max(1, round(prompt_seconds * frame_rate)), seed=seed,
                           num_resamples=num_resamples, confidence=confidence, train_dataset=dataset.get("train"))
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    report["sample_files"] = {}
    for name, audio in report.pop("audio").items():
        report["sample_files"][name] = []
        for index, waveform in enumerate(audio):
            path = samples_dir / f"{name}_{index:03d}.wav"
            write_wav(path, waveform.numpy(), identity["sample_rate"])
            report["sample_files"][name].append(str(path))
    return report


def fad_to_reference_files(codec, generated_audio, files, max_seconds=30.0, num_resamples=200, seed=0):
    """FAD of generated waveforms to audio files (read, downmixed and resampled as the data pipeline does, at most
    `max_seconds` each; unreadable or silent files are skipped and counted, and so are the files whose mp3 decoder
    printed warnings: collected, as the data pipeline collects them, instead of reaching the terminal)."""
    from data.audio import read_track
    from data.rejects import RejectedInput

    reference, skipped, with_warnings = [], 0, 0
    for path in files:
        messages = []
        try:
            reference.append(read_track(str(path), min_seconds=0.0, max_seconds=max_seconds,
                                        decoder_messages=messages))
        except RejectedInput:
            skipped += 1
        with_warnings += bool(messages)
    if not reference:
        raise ValueError(f"none of the {len(files)} reference files could be read")
    name, note, embed = embedding_for(codec)
    reference = embed(reference)
    result = fad_with_interval(embed(generated_audio), reference, num_resamples=num_resamples, seed=seed)
    return {**result, "embedding": name, "note": note, "skipped_reference_files": skipped,
            "reference_files_with_decoder_warnings": with_warnings,
            "floor": {"fad": fad_floor(reference), "what": "two halves of the reference audio"}}
