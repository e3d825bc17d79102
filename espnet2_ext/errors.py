"""The project's base class for errors caused by what a user gave it (a file, an option, a checkpoint).

Command-line tools print such an error as one line, without a traceback (see
:mod:`espnet2_ext.cli`). It is a :class:`ValueError`, so code that catches bad input as
``ValueError`` keeps working when a module moves its errors onto it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message names the file, line or id and says what to do."""
