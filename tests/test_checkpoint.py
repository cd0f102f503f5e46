"""Hub-compatible checkpoints: safetensors, auto_map, both code files, loadable from a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

# Every file the remote code imports; save_pretrained must ship each of them.
SHIPPED_CODE_FILES = {"modeling_music_hybrid.py", "configuration_music_hybrid.py", "fast_decoding_music_hybrid.py"}
CODEC = {"backend": "random", "model_id": None, "revision": None, "seed": 3, "config_overrides": None,
         "sample_rate": 44100, "hop_length": 512, "num_codebooks": 9, "codebook_size": 1024}


def saved_model(tmp_path, name="hybrid-tiny"):
    torch.manual_seed(0)
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, codec=CODEC)).eval()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    return model, folder


def test_save_pretrained_writes_weights_config_generation_config_and_code(tmp_path):
    _, folder = saved_model(tmp_path)
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert {name for name in files if name.endswith(".py")} == SHIPPED_CODE_FILES
    assert not any(name.endswith(".bin") for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_music_hybrid.MusicHybridConfig",
        "AutoModel": "modeling_music_hybrid.MusicHybridModel",
        "AutoModelForCausalLM": "modeling_music_hybrid.MusicHybridForCausalLM",
    }
    assert config["codec"] == CODEC
    assert json.loads((folder / "generation_config.json").read_text())["top_k"] == 250


@pytest.mark.parametrize("name", ["hybrid-tiny", "hybrid-mc-tiny"])  # memory caching: 21 positions, 2 segments
def test_fresh_process_in_another_directory_loads_with_remote_code_and_gets_identical_logits(tmp_path, name):
    model, folder = saved_model(tmp_path, name)
    codes = torch.randint(0, 1024, (1, 9, 12), generator=torch.Generator().manual_seed(0))
    inputs = codes_to_model_inputs(codes, model.config)
    torch.save(inputs["input_ids"], tmp_path / "input_ids.pt")
    expected = model(inputs["input_ids"]).logits
    script = textwrap.dedent(f"""
        import sys
        import torch
        from transformers import AutoModel, AutoModelForCausalLM
        base = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(base).__name__ == "MusicHybridModel", type(base)
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        logits = model(torch.load({str(tmp_path / 'input_ids.pt')!r})).logits
        torch.save(logits, {str(tmp_path / 'logits.pt')!r})
        torch.manual_seed(0)
        codes = model.generate(max_new_tokens=4, num_return_sequences=2)
        assert codes.shape == (2, 9, 4), codes.shape
        repository_modules = {{name.removesuffix(".py") for name in {sorted(SHIPPED_CODE_FILES)!r}}}
        assert not repository_modules & set(sys.modules), "the checkpoint used this repository's files"
    """)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_importing_the_model_registers_auto_classes_without_remote_code(tmp_path):
    model, folder = saved_model(tmp_path, "transformer-tiny")
    assert isinstance(AutoConfig.from_pretrained(folder), MusicHybridConfig)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(loaded, MusicHybridForCausalLM)
    input_ids = codes_to_model_inputs(torch.zeros(1, 9, 4, dtype=torch.long), model.config)["input_ids"]
    assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)


def test_non_persistent_buffers_are_rebuilt_after_loading(tmp_path):
    _, folder = saved_model(tmp_path, "hybrid-tiny")
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny", position_embedding_type="rope"))
    model.save_pretrained(folder)
    loaded = MusicHybridForCausalLM.from_pretrained(folder)
    assert torch.equal(loaded.model.codebook_offsets, torch.arange(9) * 1027)
    assert torch.equal(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
