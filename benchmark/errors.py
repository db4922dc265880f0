"""Exceptions that the command line turns into a clear message and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ShiftbenchError(Exception):
    """An error caused by the user's input or environment (not a bug).

    The CLI prints its message (no traceback) and exits with status 2.
    """

    exit_code = 2


class UnknownNameError(ShiftbenchError, KeyError):
    """A name that is not in a registry; the message lists the choices and a best guess."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        msg = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(str(name), self.choices, n=1, cutoff=0.6)
        if not close:
            lowered = {c.lower(): c for c in self.choices}
            if str(name).lower() in lowered:
                close = [lowered[str(name).lower()]]
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        msg += f"; valid choices: {', '.join(self.choices) if self.choices else '(none)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class IncompatibleBackbone(ShiftbenchError, TypeError):
    """The chosen network lacks what the algorithm needs (stages for MixStyle/SagNet, ...)."""


class UnreadableImage(ShiftbenchError):
    """An image file that cannot be decoded; the message names the file. Raised in a DataLoader
    worker, it comes back wrapped (torch re-raises it with the worker's traceback as its
    message): the wrapped form is reduced to this error's own message."""

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__}"):
            mine = [ln for ln in message.splitlines() if f"{type(self).__name__}: " in ln]
            if mine:
                message = mine[-1].split(f"{type(self).__name__}: ", 1)[1]
        super().__init__(message)


def image_error(path: object, error: BaseException) -> UnreadableImage:
    return UnreadableImage(f"cannot read image {path} ({type(error).__name__}: {error}); "
                           "replace or delete that file")


IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)  # PIL's decoding failures


class TrainingDiverged(ShiftbenchError):
    """A loss became NaN or infinite; the trial is recorded as failed."""

    exit_code = 3


class StorageError(ShiftbenchError):
    """Writing an output file failed (disk full, quota, read-only or forbidden directory).

    Nothing already written is lost: rerunning the same command once the cause is fixed resumes
    from the last intact checkpoint.
    """

    exit_code = 4

    def __init__(self, path: object, error: OSError):
        import errno
        import os

        self.path, self.error = path, error
        reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}.get(
                      error.errno, error.strerror or (os.strerror(error.errno) if error.errno
                                                      else str(error)))
        super().__init__(f"cannot write {path}: {reason}; records written so far are kept; "
                         "free space or fix the directory, then rerun the same command to resume")
