"""Tiny models learn a synthetic code process down to near its entropy.

Codebook k of frame t copies code[k-1, t] (the coarser codebook of the same frame) with probability
COPY_COARSER, copies code[k, t-1] (the previous frame) with probability COPY_PREVIOUS, and is otherwise uniform
over M symbols; codebook 0 has no coarser parent and uses a uniform draw in its place. Under the delay pattern
both parents sit at the input position just before the prediction; the entropy per token is known exactly.
"""

import math

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

SYMBOLS = 4
COPY_COARSER, COPY_PREVIOUS = 0.5, 0.3
FRAMES = 24


def synthetic_codes(batch, generator):
    codes = torch.randint(0, SYMBOLS, (batch, 9, FRAMES), generator=generator)  # the uniform draws
    choice = torch.rand(batch, 9, FRAMES, generator=generator)
    for t in range(1, FRAMES):
        for k in range(9):
            coarser = codes[:, k - 1, t] if k else codes[:, k, t]
            copied = torch.where(choice[:, k, t] < COPY_COARSER, coarser, codes[:, k, t - 1])
            codes[:, k, t] = torch.where(choice[:, k, t] < COPY_COARSER + COPY_PREVIOUS, copied, codes[:, k, t])
    return codes


def entropy(probabilities):
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def entropy_per_token():
    """Codebooks 1..8 (parents equal with probability 1/M) and codebook 0, averaged; frame 0 is uniform."""
    uniform = (1 - COPY_COARSER - COPY_PREVIOUS) / SYMBOLS
    same = entropy([COPY_COARSER + COPY_PREVIOUS + uniform] + [uniform] * (SYMBOLS - 1))
    different = entropy([COPY_COARSER + uniform, COPY_PREVIOUS + uniform] + [uniform] * (SYMBOLS - 2))
    finer = same / SYMBOLS + different * (1 - 1 / SYMBOLS)
    first = entropy([COPY_PREVIOUS + (1 - COPY_PREVIOUS) / SYMBOLS] + [(1 - COPY_PREVIOUS) / SYMBOLS] * (SYMBOLS - 1))
    later_frames = (8 * finer + first) / 9
    return (math.log(SYMBOLS) + (FRAMES - 1) * later_frames) / FRAMES


# Two layers each: [attention, attention] and [mamba, attention].
@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
def test_tiny_model_reaches_the_entropy_bound(preset):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = MusicHybridConfig.from_preset(preset, num_hidden_layers=2)
    model = MusicHybridForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    train = synthetic_codes(512, generator)
    held_out = codes_to_model_inputs(synthetic_codes(64, generator), config)
    for _ in range(250):
        batch = train[torch.randint(0, len(train), (16,), generator=generator)]
        loss = model(**codes_to_model_inputs(batch, config)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out_loss = model(**held_out).loss.item()
    assert held_out_loss <= 1.1 * entropy_per_token(), (held_out_loss, entropy_per_token())
