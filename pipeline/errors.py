"""Errors that are the user's to fix (a name, a path, a parameter), told apart from bugs.

Every command line (`python -m pipeline`, `python -m flows.extract|train|evaluate`) prints a
`UserError` as one `error: ...` line and exits 2, without a traceback: the message says what to
do. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors a user fixes by changing what they asked for or what lies on disk."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message quoted, as a repr.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class BadParametersError(UserError, ValueError):
    """Parameters that do not validate (a negative size, an unknown choice)."""


class MissingInputError(UserError, FileNotFoundError):
    """Something a run needs is not there yet (a cache entry, a run folder)."""


class AmbiguousInputError(UserError, ValueError):
    """Several things match where a run needs one; the message lists them."""


class BadInputDataError(UserError, ValueError):
    """Files on disk that are not what they claim (a stale or edited shard index)."""


class DamagedDataError(UserError, ValueError):
    """Stored data that fails its checks on read (a map chunk whose checksum or rows are wrong,
    a shard file that differs from its index). The message names the file, the rows and the
    command that repairs it.

    A loader worker's exception reaches the main process re-raised by torch as
    `type(err)("Caught ... Original Traceback ...: <message>")`; the original one-line message is
    recovered here, so the user still sees one line, whichever process found the damage."""

    _WORKER_MARKER = "\nOriginal Traceback"

    def __init__(self, message: str) -> None:
        if self._WORKER_MARKER in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)
