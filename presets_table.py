"""Print the model presets as a markdown table with their parameter counts (the table in docs/model.md).

    python presets_table.py
"""

import torch

from configuration_music_hybrid import PRESETS, MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM

PUBLISHED = {"transformer-162m": "162.08M", "hybrid-116m": "115.78M"}


def parameter_count(config):
    with torch.device("meta"):  # counts shapes without allocating weights
        return sum(p.numel() for p in MusicHybridForCausalLM(config).parameters())


def presets_table():
    rows = [
        "| preset | layers (by mixer kind) | d_model | parameters | published | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, preset in PRESETS.items():
        config = MusicHybridConfig.from_preset(name)
        kinds = {kind: config.mixer_types.count(kind) for kind in dict.fromkeys(config.mixer_types)}
        layers = f"{config.num_hidden_layers} ({', '.join(f'{count} {kind}' for kind, count in kinds.items())})"
        parameters = f"{parameter_count(config) / 1e6:.2f}M"
        rows.append(
            f"| `{name}` | {layers} | {config.hidden_size} | {parameters} | {PUBLISHED.get(name, '')} | {preset['description']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(presets_table())
