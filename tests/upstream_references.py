"""The upstream authors' pure-PyTorch reference functions, loaded from their released source files as test oracles.

mamba_ssm's and flash-linear-attention's files import CUDA extensions or triton at the top, so they cannot be
imported here: `reference_functions` reads a file and executes only the named function definitions, in a
namespace of torch, F and einops. The files come from the installed package when there is one, else from the
release downloaded once with pip (no dependencies, nothing installed) into pytest's cache folder. A test that needs
them skips when neither works (offline, no einops).
"""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# (distribution, pinned release, package folder, pip arguments): mamba-ssm ships an sdist only (its metadata step
# needs torch and no CUDA build); fla-core ships a pure-Python wheel.
RELEASES = {
    "mamba_ssm": ("mamba-ssm", "2.3.2.post1", ["--no-binary", ":all:", "--no-build-isolation"]),
    "fla": ("fla-core", "0.6.0", ["--only-binary", ":all:"]),
}


def reference_functions(request, package, relative_path, names):
    """{name: function} for the functions `names` defined in `package`/`relative_path` (e.g. "mamba_ssm",
    "modules/ssd_minimal.py"); skips the test when the file cannot be had."""
    einops = pytest.importorskip("einops", reason="the upstream references use einops")
    path = package_folder(request, package) / relative_path
    tree = ast.parse(path.read_text())
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in wanted}
    if missing:
        pytest.skip(f"{path} defines no {sorted(missing)}")
    namespace = {"torch": torch, "F": F, "rearrange": einops.rearrange, "repeat": einops.repeat}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def package_folder(request, package):
    spec = importlib.util.find_spec(package)  # a top-level package is located without being imported
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    distribution, version, pip_arguments = RELEASES[package]
    pytest_cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: a folder of this session
    if pytest_cache is not None:
        root = pytest_cache.mkdir("upstream-references")
    else:
        root = request.getfixturevalue("tmp_path_factory").mktemp("upstream")
    cache = Path(root) / f"{distribution}-{version}"
    folder = next(cache.glob(f"**/{package}/__init__.py"), None) if cache.exists() else None
    if folder is None:
        release = download(distribution, version, pip_arguments, cache)
        folder = next(release.glob(f"**/{package}/__init__.py"), None)
    if folder is None:
        pytest.skip(f"{distribution} {version} has no {package} package folder")
    return folder.parent


def download(distribution, version, pip_arguments, cache):
    """Download and unpack into a folder of this process, then move it to `cache`; returns the folder that holds
    the release. Test workers running in parallel (pytest -n) may fetch the same release at once, and none may
    read another's half-unpacked files."""
    unpacking = cache.with_name(f"{cache.name}.{os.getpid()}")
    shutil.rmtree(unpacking, ignore_errors=True)
    unpack(distribution, version, pip_arguments, unpacking)
    try:
        unpacking.rename(cache)
    except OSError:  # another worker's copy (or a broken older one) is in place: keep using this process's own
        return unpacking
    return cache


def unpack(distribution, version, pip_arguments, cache):
    cache.mkdir(parents=True)
    environment = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE", CAUSAL_CONV1D_SKIP_CUDA_BUILD="TRUE")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *pip_arguments, "-d", str(cache),
        f"{distribution}=={version}",
    ]
    try:
        subprocess.run(command, env=environment, check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"cannot download {distribution} {version} for its reference code: {error}")
    for archive in cache.iterdir():
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as opened:
                opened.extractall(cache, filter="data")
        elif archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as opened:
                opened.extractall(cache / archive.stem)
