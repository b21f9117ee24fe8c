"""The ``ldm`` command line.

Each command group lives in its own module and exposes ``register(subparsers)``; this file only
collects them, so adding a command never means editing a long ``if`` chain. Bad input raises
``ValueError`` (or ``UsageError``) inside a command; here it becomes a one-line message on stderr
and exit code 2, the convention of argparse itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from latent_diffusion import __version__

# Modules that contribute sub-commands, in the order they appear in ``ldm --help``.
COMMAND_MODULES: list[str] = [
    "latent_diffusion.data.cli",
    "latent_diffusion.training.cli",
    "latent_diffusion.pipelines.cli",
    "latent_diffusion.serve.cli",
    "latent_diffusion.evaluation.cli",
    "latent_diffusion.convert.cli",
]


class UsageError(ValueError):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``ldm`` parser with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="ldm",
        description="Latent diffusion: train autoencoders and diffusion models, and generate images.",
    )
    parser.add_argument("--version", action="version", version=f"ldm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ldm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except (ValueError, OSError) as err:
        print(f"ldm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ldm {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
