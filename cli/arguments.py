"""Dataclass arguments -> argparse, and the one-line error rule of every command.

HfArgumentParser would do the parsing, but importing transformers takes seconds; `--help` and a mistyped option
must answer at once, so the commands parse with plain argparse and import torch, transformers, datasets and
accelerate only after their arguments are accepted. The options mirror HfArgumentParser's: `--name` and
`--name-with-dashes`, booleans as flags that also take true/false, `--no_name` for booleans that default to true,
lists as several values, Literal fields as choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing


class ArgumentParser(argparse.ArgumentParser):
    """argparse answering a bad option with one `error: ...` line (exit 2), not the usage block and program name,
    and taking options only by their full names: a prefix (`--max_step` for `--max_steps`) would be taken silently,
    and a later option sharing it would change what an old command line means."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def report_error(message: str) -> int:
    """Print a user mistake as one line (once, on the main process of a launch) and return the exit code 2."""
    if os.environ.get("RANK", "0") == "0":
        print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def parse_dataclasses(dataclass_types, argv, description=None) -> tuple:
    """One instance of each dataclass from argv (a __post_init__ check may raise ValueError: the caller reports it)."""
    parser = ArgumentParser(description=description)
    for dataclass_type in dataclass_types:
        add_dataclass_arguments(parser, dataclass_type)
    namespace = vars(parser.parse_args(argv))
    return tuple(
        dataclass_type(**{field.name: namespace[field.name] for field in dataclasses.fields(dataclass_type)})
        for dataclass_type in dataclass_types
    )


def add_dataclass_arguments(parser, dataclass_type) -> None:
    hints = typing.get_type_hints(dataclass_type)
    for field in dataclasses.fields(dataclass_type):
        kind = _without_none(hints[field.name])
        names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        options = {"dest": field.name, "help": field.metadata.get("help")}
        if field.default is not dataclasses.MISSING:
            options["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            options["default"] = field.default_factory()
        else:
            options["required"] = True
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        if typing.get_origin(kind) is typing.Literal:
            options["choices"] = list(typing.get_args(kind))
            options["type"] = type(options["choices"][0])
        elif kind is bool:
            options.update(type=_to_bool, nargs="?", const=True)
            if options.get("default") is True:
                parser.add_argument(f"--no_{field.name}", dest=field.name, action="store_false",
                                    help=f"Turn off --{field.name}.")
        elif typing.get_origin(kind) is list:
            options.update(type=typing.get_args(kind)[0], nargs="+")
        else:
            options["type"] = kind
        parser.add_argument(*names, **options)


def _without_none(kind):
    """X for `X | None` and `Optional[X]`."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "y"):
        return True
    if lowered in ("false", "no", "0", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
