"""Whole-model checks that every mixer kind must pass, shared by the tests of each kind."""

import torch

from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs


def random_codes(batch=2, frames=20, seed=1):
    return torch.randint(0, 1024, (batch, 9, frames), generator=torch.Generator().manual_seed(seed))


def assert_trains(model, inputs, steps):
    """A few AdamW steps on one batch lower its loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def assert_decoding_equals_the_forward_pass(model, input_ids, prefill=7, fixed_shape=False, **conditions):
    """A prefill then one position at a time through a cache (of fixed shapes: a compiled step's) gives the full
    forward pass's logits; `conditions` (forward()'s condition arguments) go with every call."""
    with torch.no_grad():
        full = model(input_ids, **conditions).logits
        cache = model.model.new_cache(input_ids.shape[0], input_ids.shape[2], fixed_shape=fixed_shape)
        pieces = [model(input_ids[:, :, :prefill], cache=cache, **conditions).logits]
        pieces += [
            model(input_ids[:, :, t : t + 1], cache=cache, **conditions).logits
            for t in range(prefill, input_ids.shape[2])
        ]
    assert torch.cat(pieces, dim=2).sub(full).abs().max() <= 1e-4


def assert_greedy_generation_follows_the_forward_pass(model, prompt, new_frames=6):
    """Greedy decoding picks, frame by frame, what the full forward pass of its own output predicts."""
    frames = prompt.shape[2]
    greedy = model.generate(prompt, max_new_tokens=new_frames, do_sample=False)
    with torch.no_grad():
        logits = model(codes_to_model_inputs(greedy, model.config)["input_ids"]).logits
    for k in range(9):
        predicted = logits[0, k, frames + k : frames + new_frames + k].argmax(-1)  # position p: frame p - k
        assert torch.equal(predicted, greedy[0, k, frames : frames + new_frames])


def assert_reloads_the_same(model, folder, input_ids):
    """save_pretrained then from_pretrained gives the same kinds and the same logits; returns the reloaded model."""
    model.save_pretrained(folder)
    reloaded = MusicHybridForCausalLM.from_pretrained(folder).eval()
    assert reloaded.config.mixer_types == model.config.mixer_types
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)
    return reloaded


def guided_scores(model, codes, guidance_scale, **conditions):
    """null + g * (cond - null) of full forward passes over natural `codes` with `conditions` (forward()'s condition
    arguments) and without: (B, K, positions, V), and the forward passes' input ids."""
    input_ids = codes_to_model_inputs(codes, model.config)["input_ids"]
    with torch.no_grad():
        conditional = model(input_ids, **conditions).logits
        null = model(input_ids).logits
    return null + guidance_scale * (conditional - null), input_ids


def assert_greedy_codes_follow(scores, input_ids, prompt_frames, new_frames):
    """Every new code of greedy decoding is the argmax of `scores` at the position before it (codebook k of frame
    f sits at position 1 + f + k)."""
    for frame in range(prompt_frames, prompt_frames + new_frames):
        for k in range(input_ids.shape[1]):
            assert torch.equal(input_ids[:, k, frame + k + 1], scores[:, k, frame + k].argmax(-1)), (frame, k)

