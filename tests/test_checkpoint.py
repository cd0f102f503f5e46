"""Hub-compatible checkpoints: safetensors, auto_map, every shipped code file, loadable from a fresh process."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports

from configuration_music_hybrid import MusicHybridConfig
from data.audio import to_mono_44k
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from processing_music_hybrid import load_codec, random_codec_identity

# Every file the remote code imports; save_pretrained must ship each of them.
SHIPPED_CODE_FILES = {path.name for path in pathlib.Path(__file__).resolve().parents[1].glob("*_music_hybrid.py")}
CODEC = {"backend": "random", "model_id": None, "revision": None, "seed": 3, "config_overrides": None,
         "sample_rate": 44100, "hop_length": 512, "num_codebooks": 9, "codebook_size": 1024}


def saved_model(tmp_path, name="hybrid-tiny", codec=CODEC, folder_name="checkpoint"):
    torch.manual_seed(0)
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, codec=codec)).eval()
    folder = tmp_path / folder_name
    model.save_pretrained(folder)
    return model, folder


def run_in_fresh_process(script, tmp_path, **environment):
    """Run `script` with this interpreter in another directory, without this repository on the path; assert that
    it succeeds and imported none of the repository's modules (the checkpoint's own copies have other names)."""
    repository_modules = sorted(name.removesuffix(".py") for name in SHIPPED_CODE_FILES) + ["data", "training"]
    script += textwrap.dedent(f"""
        import sys
        assert not set({repository_modules!r}) & set(sys.modules), "the checkpoint used this repository's files"
    """)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), **environment)
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_model_made_from_a_preset_records_the_published_codec():
    assert MusicHybridConfig.from_preset("hybrid-tiny").codec["model_id"] == "descript/dac_44khz"


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
    """)
    run_in_fresh_process(script, tmp_path)
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


def test_fresh_process_gets_audio_in_and_out_from_the_checkpoint_alone(tmp_path):
    """decode_audio / encode_audio build the codec that config.codec names from the shipped processing file; a
    model whose codec cannot be loaded (the pretrained DAC, offline, empty cache) says which and what to do."""
    codec_identity = random_codec_identity(seed=3, small=True)
    _, folder = saved_model(tmp_path, codec=codec_identity)
    pretrained_folder = tmp_path / "pretrained-codec"
    MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny")).save_pretrained(pretrained_folder)
    stereo = torch.randn(2, 11025, generator=torch.Generator().manual_seed(0)) * 0.1  # 0.5 s at 22.05 kHz
    torch.save(stereo, tmp_path / "stereo.pt")
    script = textwrap.dedent(f"""
        import warnings
        import torch
        from transformers import AutoModelForCausalLM
        warnings.simplefilter("ignore")  # the random codec says it is random
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        torch.manual_seed(0)
        codes = model.generate(max_new_tokens=4, num_return_sequences=2)
        audio = model.decode_audio(codes)
        assert audio.shape == (2, 4 * 512) and audio.dtype == torch.float32, (audio.shape, audio.dtype)
        prompt = model.encode_audio(torch.load({str(tmp_path / 'stereo.pt')!r}), sampling_rate=22050)
        torch.save((codes, audio, prompt), {str(tmp_path / 'audio.pt')!r})
        continued = model.generate(prompt, max_new_tokens=2)
        assert torch.equal(continued[:, :, : prompt.shape[2]], prompt)

        offline = AutoModelForCausalLM.from_pretrained({str(pretrained_folder)!r}, trust_remote_code=True)
        assert offline.config.codec["model_id"] == "descript/dac_44khz"
        try:
            offline.decode_audio(codes)
        except ValueError as error:
            message = str(error)
        assert "descript/dac_44khz" in message and "Hugging Face Hub" in message, message
    """)
    run_in_fresh_process(script, tmp_path, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    codes, audio, prompt = torch.load(tmp_path / "audio.pt")
    codec = load_codec(codec_identity, device="cpu")  # (its RANDOM-weights warning is logged: test_data_codec)
    torch.testing.assert_close(audio, codec.decode(codes))
    # The data pipeline's downmix and resampling, then its codec: the same prompt codes.
    reference = codec.encode([to_mono_44k(stereo.T.numpy(), 22050)])[0]
    assert prompt.shape == (1, 9, 44) and torch.equal(prompt[0], reference)


def test_shipped_files_import_only_what_a_hub_user_has():
    """transformers refuses remote code whose imports (outside try blocks) are not installed: the shipped files
    import only torch, transformers, numpy, huggingface_hub, safetensors (transformers' own dependencies) and each
    other at the top."""
    root = pathlib.Path(__file__).resolve().parent.parent
    allowed = {"torch", "transformers", "numpy", "huggingface_hub", "safetensors"}
    for name in SHIPPED_CODE_FILES:
        assert set(get_imports(root / name)) - set(sys.stdlib_module_names) <= allowed, name
