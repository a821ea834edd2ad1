"""Exceptions shared by every package: one clear line for the user, never a traceback."""

from __future__ import annotations

from pathlib import Path


class MeshgenError(Exception):
    """Base class of every error this project raises on purpose."""


class MeshInputError(MeshgenError, ValueError):
    """A file or array given as input cannot be used; the message names the file and the problem.

    Parameters
    ----------
    path : str or Path or None
        The offending file, or ``None`` for in-memory input.
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = self.path if self.path is not None else "<in-memory input>"
        super().__init__(f"{where}: {problem}")


class MeshOutputError(MeshgenError):
    """A file cannot be written (no permission, read-only or full file system, a directory in the way,
    the output is the input); the message names the file and the problem.

    Parameters
    ----------
    path : str or Path
        The output the user asked for (never a temporary file beside it).
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # survives the trip back from a worker process
        return type(self), (self.path, self.problem)


class ConfigError(MeshgenError, ValueError):
    """A setting is invalid (unknown tokenizer, bits out of range, ...)."""


class UnknownTokenizerError(ConfigError, KeyError):
    """``get_tokenizer`` was given a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TokenizationError(MeshgenError, ValueError):
    """A token sequence cannot be decoded; ``position`` is the index of the first bad token."""

    def __init__(self, message: str, position: int | None = None):
        self.position = position
        suffix = "" if position is None else f" (at token {position})"
        super().__init__(f"{message}{suffix}")
