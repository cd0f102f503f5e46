"""What every benchmark shares: the machine and settings header, timing, peak memory, read bandwidth and tables.

Figures are only comparable within one run on one machine, so each benchmark measures its baselines side by
side and prints the machine it ran on; timings are the best of several repeats (the least disturbed by other
load), and the load average is printed so that a noisy run can be recognised.
"""

import argparse
import contextlib
import ctypes
import os
import platform
import sys
import time

import torch
import transformers

SKIPPED = "skipped"


def add_machine_arguments(parser):
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each fast measurement; the best counts")


def setup_machine(args):
    """Apply --threads and check --device; returns the torch.device."""
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats <= 0:
        raise ValueError(f"--repeats must be positive, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    return device


def run_cli(main):
    """Run a benchmark's main(); user mistakes end with a one-line message and exit status 2."""
    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def cpu_model():
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(device):
    rows = [
        ("cpu", cpu_model()),
        ("cores available", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())),
        ("torch threads", str(torch.get_num_threads())),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
        ("python", platform.python_version()),
    ]
    if hasattr(os, "getloadavg"):
        rows.append(("load average (1 min) at start", f"{os.getloadavg()[0]:.2f}"))
    if device.type == "cuda":
        rows.append(("gpu", torch.cuda.get_device_name(device)))
    return rows


def print_header(title, device, settings):
    """The machine and the settings, as a two-column table under the benchmark's title."""
    print(f"# {title}\n")
    print_table(["machine", ""], machine_description(device))
    print_table(["setting", "value"], [(name, str(value)) for name, value in settings.items()])


def print_table(headers, rows):
    """A Markdown table (ready to paste into docs/performance.md), columns padded for reading in a terminal."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    print(line([str(h) for h in headers]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(flush=True)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device, repeats):
    """Best wall-clock seconds of `repeats` calls of fn() (the first call is not a warm-up: call it before)."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def peak_memory(device):
    """Measures the peak memory used inside the block above what was in use when it began. Yields a dict whose
    "bytes" is filled on exit (None where it cannot be measured).

    CUDA: the caching allocator's peak. CPU (Linux with glibc): the process's peak resident size (VmHWM, reset
    through /proc/self/clear_refs), after handing the C allocator's free memory back to the system so that the
    baseline holds only live memory. (torch's memory profiler is no alternative: over the many small operators
    of a step-by-step loop it takes gigabytes itself.)
    """
    result = {"bytes": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - baseline
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        baseline = resident_bytes("VmRSS")
    except OSError:  # not Linux / glibc
        yield result
        return
    yield result
    result["bytes"] = max(0, resident_bytes("VmHWM") - baseline)


def resident_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def read_bandwidth(device, gib=1.0, repeats=5):
    """Memory read bandwidth in bytes/s: the best of `repeats` full reads (a sum) of a `gib` GiB float32 tensor."""
    tensor = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    tensor.sum()
    seconds = best_time(lambda: tensor.sum(), device, repeats)
    return tensor.numel() * 4 / seconds


def mib(num_bytes):
    return SKIPPED if num_bytes is None else f"{num_bytes / 2**20:,.0f}"


def seconds_text(seconds):
    if seconds is None:
        return SKIPPED
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def ratio_text(numerator, denominator, digits=1):
    """numerator / denominator as "12.3x" (`digits` decimals), or skipped when either is missing."""
    if numerator is None or denominator is None:
        return SKIPPED
    return f"{numerator / denominator:.{digits}f}x"


def new_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
