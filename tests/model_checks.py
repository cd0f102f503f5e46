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


def assert_decoding_equals_the_forward_pass(model, input_ids, prefill=7):
    """A prefill then one position at a time through a cache gives the full forward pass's logits."""
    with torch.no_grad():
        full = model(input_ids).logits
        cache = model.model.new_cache(input_ids.shape[0], input_ids.shape[2])
        pieces = [model(input_ids[:, :, :prefill], cache=cache).logits]
        pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(prefill, input_ids.shape[2])]
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
