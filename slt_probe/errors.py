"""The two kinds of bad input, kept apart because the walk treats them differently.

InputError: the command cannot start (no checkpoints, unreadable data, a model spec that does not import).
The CLI prints its one-line message and exits with code 2.
CheckpointError: one checkpoint cannot be used (truncated, wrong keys, NaN weights, a pickle that would run
code, vanished or changed while read). The walk records it as failed with the message and goes on to the next one.
OutputError: the results file cannot be written; what it held stays, and the run stops.
Their messages are one line and name the file and what is wrong.
"""


class InputError(ValueError):
    pass


class CheckpointError(Exception):
    pass


def first_line(e: BaseException) -> str:
    """An exception's message as one line of at most 300 characters: what a row or a log line records."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


class OutputError(OSError):
    """The results file could not be written (a full disk, a vanished folder): the file keeps what it held, and the
    message, one line, names it."""
