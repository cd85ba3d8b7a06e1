"""The `nvc` command: one entry point, subcommands registered by small modules.

Each `nvc/commands/*.py` module exposes `register(subparsers)` and imports its heavy
dependencies (torch, FastAPI, ...) only inside its handlers, so `nvc --help` and the
client commands work without the codec or server stack installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute subcommands, in help order. A module that is absent is skipped.
COMMAND_MODULES = (
    "nvc.commands.codec_cmds",  # compress, decompress, info, bench, train
    "nvc.commands.serve",  # serve (embedded stack), worker, api
    "nvc.commands.remote",  # remote compress/decompress (batch client)
    "nvc.commands.keys",  # API key management
)


class CLIError(Exception):
    """An error reported as one line on stderr with a non-zero exit status."""


def build_parser() -> argparse.ArgumentParser:
    from nvc import __version__

    parser = argparse.ArgumentParser(prog="nvc", description="Lossless neural compression for 3-D medical volumes.")
    parser.add_argument("-V", "--version", action="version", version=f"nvc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("nvc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as exc:  # one line, never a traceback, for expected failures
        from nvc.errors import describe

        message = describe(exc)
        if message is None:
            raise
        print(f"nvc: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
