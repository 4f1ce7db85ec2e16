"""The two kinds of bad input, kept apart because the walk treats them differently.

InputError: the command cannot start (no checkpoints, unreadable data, a model spec that does not import).
The CLI prints its one-line message and exits with code 2.
CheckpointError: one checkpoint cannot be used (truncated, wrong keys, NaN weights, a pickle that would run
code). The walk records it as failed with the message and goes on to the next one.
Both messages are one line and name the file and what is wrong.
"""


class InputError(ValueError):
    pass


class CheckpointError(Exception):
    pass


def first_line(e: BaseException) -> str:
    """An exception's message as one line of at most 300 characters: what a row or a log line records."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
