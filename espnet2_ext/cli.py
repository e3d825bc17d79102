"""How every ``espnet2_ext`` command ends on bad input: one line saying what is wrong, no traceback.

A command's ``__main__`` block is ``sys.exit(run_cli(main))``. An error caused by the user's
input — a missing or unreadable file, a malformed Kaldi line, bad markup or audio, an unreadable
checkpoint, invalid YAML, any :class:`~espnet2_ext.errors.UserError` — is printed as
``PROG: error: MESSAGE`` on stderr and the exit status is 2, as argparse does for a bad option.
Any other exception is a bug and keeps its traceback. ``--verbose`` (declared with
:func:`add_verbose_argument`) or ``ESPNET2_EXT_VERBOSE=1`` (for commands whose options go to
ESPnet's parser) prints the traceback of a user error as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from espnet2_ext.errors import UserError
from espnet2_ext.text.kaldi_text import BadAudio, KaldiTextError
from espnet2_ext.text.ner_markup import MarkupError

VERBOSE_ENV = "ESPNET2_EXT_VERBOSE"
EXIT_USER_ERROR = 2

USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, KaldiTextError, MarkupError, BadAudio, yaml.YAMLError,
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
)  # fmt: skip
# User errors of modules too heavy to import only to catch them: a class whose module was never
# imported cannot have been raised, so it is looked up in sys.modules when an error happens.
_LAZY_USER_ERRORS = (("espnet2_ext.checkpoint_io", "CheckpointError"),)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """Declare ``--verbose`` (read by :func:`run_cli` from the command line)."""
    parser.add_argument(
        "--verbose", action="store_true", help=f"print the traceback of an input error too (or set {VERBOSE_ENV}=1)"
    )


def is_user_error(err: BaseException) -> bool:
    lazy = tuple(
        getattr(sys.modules[module], name) for module, name in _LAZY_USER_ERRORS if module in sys.modules
    )
    return isinstance(err, USER_ERRORS + lazy)


def error_message(err: BaseException) -> str:
    """The error as one line (file errors as ``path: reason``)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__


def _prog(main: Callable) -> str:
    module = main.__module__
    return Path(sys.argv[0]).stem if module == "__main__" else module.rpartition(".")[2]


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (default: the command line) and return its exit status (None is 0)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args) or 0
    except Exception as err:
        if not is_user_error(err):
            raise
        if "--verbose" in args or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"{_prog(main)}: error: {error_message(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
