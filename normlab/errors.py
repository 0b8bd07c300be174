"""Errors that end a run with a clear message, and how a command reports any error.

`run_reporting_errors(command, debug=False)` is the one place an exception becomes the user's
one `error:` line (the `normlab` command and the sweep's entry points use it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class NormlabError(Exception):
    """Base of the errors whose message is the whole story for the user."""


class NonFiniteLossError(NormlabError):
    """The training loss became NaN or infinite; the message names the step and checkpoint."""


class TrainingInterrupted(NormlabError):
    """A run stopped by SIGINT or SIGTERM before its last step (its checkpoint is saved): what
    collects finished runs (an experiment's report) must not go on with it as a result."""


class ConfigError(NormlabError, ValueError):
    """A config file could not be loaded or run; the message names the file and line.

    Also a ValueError: code that collects bad configs (a sweep's trials) catches it as one.
    """


def debug_from_env() -> bool:
    """Whether $NORMLAB_DEBUG asks for full tracebacks (set, and neither "" nor "0")."""
    return os.environ.get("NORMLAB_DEBUG", "") not in ("", "0")


def run_reporting_errors(command: Callable[[], int], *, debug: bool = False) -> int:
    """Runs `command`, turning any exception into one `error:` line on stderr and status 1.

    Errors whose message is the whole story (NormlabError, ValueError, OSError: bad input,
    missing or unwritable files) print as they are; anything else prints its type and a hint
    at --debug. With `debug`, exceptions propagate (the full traceback). Ctrl-C is status 130.
    """
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except (NormlabError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if debug:
            raise
        print(
            f"error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(err: BaseException) -> str:
    """An unexpected error's first line (XLA's messages run long); the expected ones whole
    (normlab's multi-line messages, such as every bad trial of a sweep, are meant whole)."""
    text = str(err).strip()
    if isinstance(err, NormlabError | ValueError | OSError):
        return text or type(err).__name__
    return text.splitlines()[0] if text else "(no message)"
