"""Exit codes of `mpnn`, distinct per cause so scripts and supervisors can react."""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    OK = 0
    # The command failed for another reason (see the logged error).
    FAILED = 1
    # Bad command line arguments (argparse's own code).
    USAGE = 2
    # A config, job or plan file is invalid; the message names the field.
    CONFIG_ERROR = 3
    # The broker could not be reached or refused the credentials.
    BROKER_UNREACHABLE = 4
    # The shared store is missing, unwritable or holds a corrupt file.
    STORE_UNUSABLE = 5
    # Interrupted by SIGINT (128 + 2, as shells report it).
    INTERRUPTED = 130
