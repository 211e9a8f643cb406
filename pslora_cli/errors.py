"""Error types the CLI maps to exit codes.

InputError -> exit 2: bad input from the user (usage, sequence YAML, data, store). Its message is one line
that names the file, key or line at fault. Anything else raised while working -> exit 1.
"""


class InputError(Exception):
    """Bad input: the message is a single line naming the file, key or line at fault."""


class WorkError(Exception):
    """A failure while working (not the user's input): exit code 1 with a one-line message."""


class Interrupted(WorkError):
    """SIGINT/SIGTERM during training: the state was checkpointed; rerunning the command resumes (exit 130)."""
