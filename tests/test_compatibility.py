"""Checkpoints saved by earlier code load with today's and give the same logits and, for a seed, the same samples
(see tests/fixtures/legacy_checkpoints/README.md)."""

from pathlib import Path

import pytest
import torch

from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

LEGACY = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
KINDS = sorted(path.name for path in LEGACY.iterdir() if path.is_dir())


def test_every_fixture_is_found():
    assert len(KINDS) == 7


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_checkpoint_gives_the_same_outputs(kind, single_torch_thread):
    expected = torch.load(LEGACY / kind / "expected.pt")
    model = MusicHybridForCausalLM.from_pretrained(LEGACY / kind).eval()
    with torch.no_grad():
        inputs = codes_to_model_inputs(expected["codes"], model.config)
        logits = model(**inputs, **expected["forward_kwargs"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    torch.manual_seed(5)
    sample = model.generate(expected["prompt"], max_new_tokens=24, num_return_sequences=2, **expected["generate_kwargs"])
    assert torch.equal(sample, expected["sample"])
    greedy = model.generate(expected["prompt"], max_new_tokens=24, do_sample=False, **expected["generate_kwargs"])
    assert torch.equal(greedy, expected["greedy"])
