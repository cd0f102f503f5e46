"""Benchmark the whole Mamba-1 mixer: our chunked PyTorch scan vs a plain state-carrying loop vs transformers; and
the Mamba-2 and Gated DeltaNet mixers at the same d_model beside it.

Three mixers with the same weights (d_model 768, expand 2, d_state 64, dt_rank 48, d_conv 4 by default):
ours (the PyTorch path, eager and with its chunks fused by torch.compile, and the mamba-ssm kernels when they
run here), ours with the scan replaced by a plain state-carrying PyTorch loop (the fair baseline: autograd
through every step), and transformers' `MambaMixer` torch path, which materialises the (batch, d_inner, L,
d_state) decays before looping. For each length: forward under torch.no_grad(), forward+backward, and the peak
memory of each, then the speedups side by side. Two
floors that no implementation's forward pass can beat: the mixer's four projections alone, and the projections
plus the decays exp(delta A), one exponential per step, channel and state, which every selective scan computes.
The Mamba-2 mixer (the settings of hybrid-mamba2-116m: d_state 256, head size 32) is also run as transformers'
`Mamba2Mixer` torch path with the same weights, and the Gated DeltaNet mixer has those of hybrid-gdn-116m (6
heads of 108); both are compared per position with our Mamba-1 mixer (the issue's target: within 1.5x).

    python -m bench.bench_scan                          # a few minutes on a 2-core CPU
    python -m bench.bench_scan --with-slow-baselines    # adds transformers' forward+backward at 2048 (10-20 min)
"""

import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mamba_music_hybrid  # noqa: E402
import selective_scan_music_hybrid  # noqa: E402
from bench.machine import (  # noqa: E402
    SKIPPED, add_machine_arguments, best_time, mib, new_parser, peak_memory, print_header, print_table, ratio_text,
    run_cli, seconds_text, setup_machine,
)
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from modeling_music_hybrid import MIXERS  # noqa: E402

OURS, OURS_COMPILED, OURS_KERNELS, PLAIN_LOOP, TRANSFORMERS = (
    "ours (PyTorch chunked scan)", "ours (chunks fused by torch.compile)", "ours (mamba-ssm kernels)",
    "plain PyTorch loop", "transformers MambaMixer (torch)",
)
MAMBA2, TRANSFORMERS_MAMBA2, GATED_DELTANET = (
    "Mamba-2 (PyTorch chunked SSD)", "transformers Mamba2Mixer (torch)", "Gated DeltaNet (PyTorch chunked WY)",
)
# Rows whose outputs are checked against another row's (same weights); the rest against ours (Mamba-1).
SAME_WEIGHTS_AS = {TRANSFORMERS_MAMBA2: MAMBA2}
OTHER_MIXERS = (MAMBA2, TRANSFORMERS_MAMBA2, GATED_DELTANET)
PROJECTIONS = "floor: the 4 projections alone"
DECAYS = "floor: projections + decays exp(delta A)"


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192], help="sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--dt-rank", type=int, default=48)
    parser.add_argument("--d-conv", type=int, default=4)
    parser.add_argument("--mamba2-d-state", type=int, default=256)
    parser.add_argument("--mamba2-headdim", type=int, default=32)
    parser.add_argument("--gdn-heads", type=int, default=6)
    parser.add_argument("--gdn-head-dim", type=int, default=108)
    parser.add_argument(
        "--with-slow-baselines", action="store_true",
        help="also run transformers' forward+backward at 2048 (about 11 minutes on a 2-core CPU) and the plain "
        "loop's forward+backward beyond 2048 (it keeps every step's state: about 17 GB at 8192)",
    )
    add_machine_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    if min(args.lengths) <= 0 or args.batch <= 0:
        raise ValueError("--lengths and --batch must be positive")
    ours = build_our_mixer(args, device)
    mixers = {
        OURS: ours, OURS_COMPILED: build_our_mixer(args, device, implementation="compiled"), PLAIN_LOOP: ours,
        TRANSFORMERS: build_transformers_mixer(args, ours, device), PROJECTIONS: ours, DECAYS: ours,
    }
    mixers[MAMBA2] = build_other_mixer(args, device, "mamba2")
    mixers[TRANSFORMERS_MAMBA2] = build_transformers_mamba2_mixer(args, mixers[MAMBA2], device)
    mixers[GATED_DELTANET] = build_other_mixer(args, device, "gated_deltanet")
    if device.type == "cuda" and mamba_music_hybrid.mamba_kernels() is not None:
        mixers[OURS_KERNELS] = build_our_mixer(args, device, implementation="kernels")
    print_header(
        "Mamba-1 mixer: forward and forward+backward", device,
        {
            "d_model / d_inner / d_state / dt_rank / d_conv": " / ".join(
                str(value) for value in
                (args.hidden_size, args.expand * args.hidden_size, args.d_state, args.dt_rank, args.d_conv)
            ),
            "Mamba-2 d_state / head size": f"{args.mamba2_d_state} / {args.mamba2_headdim}",
            "Gated DeltaNet heads / head size": f"{args.gdn_heads} / {args.gdn_head_dim}",
            "batch": args.batch, "lengths": args.lengths, "dtype": "float32", "repeats (best counts)": args.repeats,
            "slow baselines": "run" if args.with_slow_baselines else "skipped (--with-slow-baselines)",
        },
    )
    print(f"max |output - ours| at L={min(args.lengths)}: " + ", ".join(
        f"{name}: {difference:.1e}" for name, difference in output_differences(mixers, args, device).items()
    ) + "\n")
    results = {}
    for length in args.lengths:
        for name, mixer in mixers.items():
            results[length, name] = measure(name, mixer, length, args, device)
            print(f"L={length} {name}: {results[length, name]}", file=sys.stderr, flush=True)
    print_results(results, args.lengths, list(mixers))
    print_targets(results)


def build_our_mixer(args, device, implementation="torch"):
    """One Mamba layer's mixer; the same seed gives every implementation the same weights."""
    config = MusicHybridConfig(
        hidden_size=args.hidden_size, num_hidden_layers=1, attention_period=0, mamba_d_state=args.d_state,
        mamba_expand=args.expand, mamba_dt_rank=args.dt_rank, mamba_d_conv=args.d_conv,
        mamba_implementation=implementation,
    )
    torch.manual_seed(0)
    mixer = mamba_music_hybrid.MambaMixer(config, layer_idx=0)
    mixer.init_own_weights()
    return mixer.to(device)


def build_other_mixer(args, device, kind):
    """A Mamba-2 or Gated DeltaNet layer's mixer at the same d_model (PyTorch path)."""
    config = MusicHybridConfig(
        hidden_size=args.hidden_size, num_hidden_layers=1, mixer_types=[kind], mamba2_d_state=args.mamba2_d_state,
        mamba2_headdim=args.mamba2_headdim, mamba2_expand=args.expand, mamba2_implementation="torch",
        gdn_num_heads=args.gdn_heads, gdn_head_dim=args.gdn_head_dim, gdn_implementation="torch",
    )
    torch.manual_seed(0)
    mixer = MIXERS[kind](config, layer_idx=0)
    mixer.init_own_weights()
    return mixer.to(device)


def build_transformers_mamba2_mixer(args, ours, device):
    """transformers' Mamba2Mixer with our Mamba-2 weights (mamba_ssm's parameter names, which both use)."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = Mamba2Config(
        hidden_size=args.hidden_size, state_size=args.mamba2_d_state, expand=args.expand,
        head_dim=args.mamba2_headdim, num_heads=ours.nheads, n_groups=ours.ngroups, conv_kernel=ours.d_conv,
        use_bias=False, use_conv_bias=True, num_hidden_layers=1, layer_norm_epsilon=ours.norm.eps,
    )
    mixer = Mamba2Mixer(config, layer_idx=0)
    mixer.load_state_dict(ours.state_dict())
    return mixer.to(device)


def build_transformers_mixer(args, ours, device):
    """transformers' MambaMixer with our weights (mamba_ssm's parameter names, which both use)."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = MambaConfig(
        hidden_size=args.hidden_size, state_size=args.d_state, expand=args.expand, time_step_rank=args.dt_rank,
        conv_kernel=args.d_conv, num_hidden_layers=1,
    )
    mixer = MambaMixer(config, layer_idx=0)
    mixer.load_state_dict(ours.state_dict())
    return mixer.to(device)


def plain_loop_scan(u, delta, A, B, C, initial_state=None, compiled=False):
    """The fair baseline scan: the recurrence one step at a time, autograd keeping every step's state."""
    u, delta, B, C = (t.float() for t in (u, delta, B, C))
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(u.shape[-1]):
        state = torch.exp(delta[..., t, None] * A) * state + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        outputs.append(torch.matmul(state, C[:, :, t, None])[..., 0])
    return torch.stack(outputs, dim=-1), state


def run_mixer(name, mixer, hidden_states):
    if name == PLAIN_LOOP:
        with mock.patch.object(mamba_music_hybrid, "selective_scan", plain_loop_scan):
            return mixer(hidden_states)
    if name in (PROJECTIONS, DECAYS):
        return projections_alone(mixer, hidden_states, with_decays=name == DECAYS)
    return mixer(hidden_states)


def projections_alone(mixer, hidden_states, with_decays=False, chunk_size=16):
    """in_proj, x_proj, dt_proj and out_proj on tensors of their real shapes: matmuls every implementation
    runs, so their time is a floor under any mixer's forward pass. with_decays adds the decays exp(delta_t A)
    of every step, channel and state, which every selective scan computes at least once: one multiply and one
    exponential an element, a chunk of steps at a time into one reused buffer (as our scan computes them)."""
    x = mixer.in_proj(hidden_states)[..., : mixer.d_inner]
    delta = F.softplus(mixer.dt_proj(mixer.x_proj(x)[..., : mixer.dt_rank]))
    if with_decays:
        exponents = selective_scan_music_hybrid.decay_exponents(mixer.A_log)
        steps = delta.transpose(0, 1)  # (T, batch, d_inner)
        decays = delta.new_empty(chunk_size, *steps.shape[1:], exponents.shape[1])
        for start in range(0, steps.shape[0], chunk_size):
            chunk = steps[start : start + chunk_size]
            torch.mul(chunk[..., None], exponents, out=decays[: chunk.shape[0]]).exp2_()
    return mixer.out_proj(x) + delta.sum()


def output_differences(mixers, args, device):
    hidden_states = torch.randn(args.batch, min(args.lengths), args.hidden_size, device=device)
    differences = {}
    with torch.no_grad():
        for name, mixer in mixers.items():
            reference = SAME_WEIGHTS_AS.get(name, OURS)
            if name in (OURS, PROJECTIONS, DECAYS) or (reference == OURS and name in OTHER_MIXERS):
                continue
            output = run_mixer(name, mixer, hidden_states)
            differences[name] = (output - run_mixer(reference, mixers[reference], hidden_states)).abs().max().item()
    return differences


def measure(name, mixer, length, args, device):
    """forward / forward+backward seconds and peak bytes for one mixer at one length (None = skipped)."""
    generator = torch.Generator(device=device).manual_seed(length)
    hidden_states = torch.randn(args.batch, length, args.hidden_size, device=device, generator=generator)
    grad_output = torch.randn(hidden_states.shape, device=device, generator=generator)
    slow_baseline = name in (PLAIN_LOOP, TRANSFORMERS, TRANSFORMERS_MAMBA2) and device.type == "cpu"
    run_forward = not (name == TRANSFORMERS and length > 2048)
    run_backward = run_forward and name not in (PROJECTIONS, DECAYS) and (
        args.with_slow_baselines or not slow_baseline or length <= (512 if name == TRANSFORMERS else 2048)
    )

    def forward():
        with torch.no_grad():
            run_mixer(name, mixer, hidden_states)

    def forward_backward():
        mixer.zero_grad(set_to_none=True)
        inputs = hidden_states.detach().requires_grad_()
        run_mixer(name, mixer, inputs).backward(grad_output)

    result = {"forward": None, "forward_peak": None, "backward": None, "backward_peak": None}
    if run_forward:
        result["forward"], result["forward_peak"] = time_and_peak(forward, device, args.repeats)
    if run_backward:
        repeats = 0 if slow_baseline else args.repeats
        result["backward"], result["backward_peak"] = time_and_peak(forward_backward, device, repeats)
    return result


def time_and_peak(fn, device, repeats):
    """(best seconds, peak bytes). The first call runs under the memory profiler and warms up; `repeats` more
    calls are timed, or with 0 (baselines too slow to repeat) the profiled call's time counts."""
    with peak_memory(device) as peak:
        seconds = best_time(fn, device, 1)
    if repeats:
        seconds = best_time(fn, device, repeats)
    return seconds, peak["bytes"]


def print_results(results, lengths, names):
    rows = []
    for length in lengths:
        transformers_result, loop_result = results[length, TRANSFORMERS], results[length, PLAIN_LOOP]
        ours_result = results[length, OURS]
        for name in names:
            result = results[length, name]
            rows.append([
                length, name, seconds_text(result["forward"]), seconds_text(result["backward"]),
                mib(result["forward_peak"]), mib(result["backward_peak"]),
                ratio_text(transformers_result["forward"], result["forward"]),
                ratio_text(transformers_result["backward"], result["backward"]),
                ratio_text(loop_result["backward"], result["backward"]),
                ratio_text(result["backward_peak"], loop_result["backward_peak"]),
                ratio_text(result["backward"], ours_result["backward"]),
            ])
    print_table(
        ["L", "mixer", "forward s", "fwd+bwd s", "forward peak MiB", "fwd+bwd peak MiB",
         "forward: transformers / this", "fwd+bwd: transformers / this", "fwd+bwd: loop / this",
         "fwd+bwd peak: this / loop", "fwd+bwd: this / ours (Mamba-1)"],
        rows,
    )


def print_targets(results):
    """The issue's targets at L=2048, measured in this run, for each of our PyTorch paths."""
    length = 2048
    if (length, OURS) not in results:
        return
    loop, reference = results[length, PLAIN_LOOP], results[length, TRANSFORMERS]
    projections, decays = results[length, PROJECTIONS], results[length, DECAYS]

    def check(label, value, target, verdicts=("met", "NOT met")):
        if value is None:
            return [label, f">= {target}x", SKIPPED, SKIPPED]
        return [label, f">= {target}x", f"{value:.1f}x", verdicts[0] if value >= target else verdicts[1]]

    def ratio(numerator, denominator):
        return None if numerator is None or denominator is None else numerator / denominator

    rows = []
    for name in (OURS, OURS_COMPILED):
        ours = results[length, name]
        rows += [
            check(f"{name}: forward vs transformers", ratio(reference["forward"], ours["forward"]), 10),
            check(f"{name}: fwd+bwd vs transformers", ratio(reference["backward"], ours["backward"]), 100),
            check(f"{name}: fwd+bwd vs plain loop", ratio(loop["backward"], ours["backward"]), 2),
            check(f"{name}: fwd+bwd peak memory, loop / ours", ratio(loop["backward_peak"], ours["backward_peak"]), 2),
        ]
    for name in (MAMBA2, GATED_DELTANET):  # within 1.5x of our Mamba-1 per position: ours / this >= 1 / 1.5
        rows.append(check(
            f"{name}: fwd+bwd, ours (Mamba-1) / this", ratio(results[length, OURS]["backward"], results[length, name]["backward"]),
            round(1 / 1.5, 2),
        ))
    rows += [
        check(
            "forward ceiling: transformers / projections alone", ratio(reference["forward"], projections["forward"]),
            10, ("reachable", "out of reach on this machine: the matmuls alone take longer"),
        ),
        check(
            "forward ceiling: transformers / (projections + decays)", ratio(reference["forward"], decays["forward"]),
            10, ("reachable", "out of reach on this machine: the matmuls and decays alone take longer"),
        ),
    ]
    print_table([f"target at L={length}", "wanted", "measured", ""], rows)


if __name__ == "__main__":
    run_cli(main)
