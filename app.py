"""A listening page in the browser: generate with a checkpoint and hear it while it renders, compare checkpoints
side by side with the same seed, and run a blind A/B test (needs the `app` extra: pip install -e ".[app]").

    python app.py --model demo_output/hybrid-small --model demo_output/transformer-small
    python app.py                                  # the models demo.py trained, when demo_output/ exists
    python app.py --model user/music-hybrid-116m --host 0.0.0.0 --port 7860

Everything the page writes (samples, uploads, the A/B preferences file) stays in --output-dir, and no request can
read a file outside it. See docs/app.md.
"""

import argparse
import importlib.util
import os
import shutil
import sys

from cli.arguments import ArgumentParser, report_error


def main(argv=None):
    """A bad checkpoint or option is refused before the server starts (one `error:` line, exit code 2)."""
    args = parse_args(argv)
    from listening.checkpoints import check_checkpoints, checkpoint_paths

    try:
        check_arguments(args)
        checkpoints = check_checkpoints(checkpoint_paths(args.model))
    except ValueError as error:
        return report_error(str(error))
    output_dir = os.path.abspath(args.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    # Before gradio is imported, which reads them: no usage reports or version checks leave the machine, and
    # uploads and gradio's copies of the samples stay inside the output folder.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(output_dir, "gradio")
    from generation.pipeline import resolve_device
    from listening.checkpoints import LoadedModels
    from listening.page import Page

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    page = Page(
        checkpoints, LoadedModels(device), output_dir, args.max_duration,
        int8=(True if args.int8 is None else args.int8) if on_cpu else None,
        compile_decoding=can_compile() if args.compile is None else args.compile,
        live_stream=shutil.which("ffmpeg") is not None,  # gradio encodes the live stream with ffmpeg
    )
    if not page.live_stream:
        print("note: ffmpeg is not installed: the page plays each sample when it is finished, not while it renders",
              file=sys.stderr)
    page.build().launch(
        server_name=args.host, server_port=args.port, allowed_paths=[output_dir], ssr_mode=False, pwa=False,
        mcp_server=False, share=False, show_error=False, max_file_size="50mb", footer_links=[],
    )
    return 0


def check_arguments(args):
    if importlib.util.find_spec("gradio") is None:
        raise ValueError('the listening page needs gradio: pip install -e ".[app]"')
    if not (0 < args.max_duration <= 3600):
        raise ValueError(f"--max-duration must be between 0 and 3600 seconds, got {args.max_duration:g}")
    if not (0 < args.port < 65536):
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir!r} is a file, not a folder; choose a folder")


def can_compile() -> bool:
    """Compiled decoding is the faster default where inductor can build its C++ (a compiler is installed)."""
    return any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++"))


def parse_args(argv=None):
    parser = ArgumentParser(description="Serve a listening page for music-hybrid checkpoints (Gradio).")
    models = os.environ.get("MUSIC_HYBRID_MODELS", "").split()
    parser.add_argument(
        "--model", action="append",
        help="checkpoint folder or Hub id; repeat for a comparison (default: $MUSIC_HYBRID_MODELS, space-separated, "
        "else the models in demo_output/)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default 7860)")
    parser.add_argument("--output-dir", "--output_dir", default=os.environ.get("MUSIC_HYBRID_APP_OUTPUT", "app_output"),
                        help="folder for the samples, uploads and preferences.json (default: $MUSIC_HYBRID_APP_OUTPUT, "
                        "else app_output)")
    parser.add_argument("--max-duration", "--max_duration", type=float, default=30.0,
                        help="longest sample the page offers, in seconds (default 30)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                        help="int8 weights on CPU by default (the fastest CPU decoding); --no-int8 for float32")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compiled decoding by default where a C++ compiler is installed (faster after a "
                        "first compilation of tens of seconds); --no-compile to start generating at once")
    args = parser.parse_args(argv)
    args.model = args.model or models
    return args


if __name__ == "__main__":
    sys.exit(main())
