"""The one error type for bad input: a file, a setting or a state of the run folder that the user can fix. Its message
names the file or key and the fix; the command line prints it as one `motfm: error:` line (exit code 2). Anything
else that escapes a command is a bug in motfm and is reported as one (flows/cli.py)."""

from __future__ import annotations

__all__ = ["BadInput", "InputMissing"]


class BadInput(ValueError):
    """Bad input or settings; a retry cannot help, the user's fix can. A ValueError, so library callers that catch
    ValueError keep working."""


class InputMissing(BadInput, FileNotFoundError):
    """A file or folder the user named (or a stage's output a later stage needs) is not there."""
