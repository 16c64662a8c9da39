"""Typed errors a user can cause. The CLI maps them to exit codes: 2 bad input, 3 the gate rejected a
batch, 1 anything unexpected."""

from __future__ import annotations


class LooplineError(Exception):
    """Base class for errors with a user-facing message."""

    exit_code = 1


class ConfigError(LooplineError):
    """A configuration file, `--set` override or parameter is invalid."""

    exit_code = 2


class NotReadyError(LooplineError):
    """A stage's input does not exist yet (no clean data, no features): run the earlier stage first."""

    exit_code = 2


class ContractError(LooplineError):
    """A dataset contract is invalid. Carries the file and the key at fault."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        where = ", ".join(p for p in (f"file {file}" if file else "", f"key {key!r}" if key else "") if p)
        super().__init__(f"{message} ({where})" if where else message)
        self.file = file
        self.key = key


class SourceError(LooplineError):
    """A source file cannot be read at all (missing, unparseable, not UTF-8 ...). Names the file."""

    exit_code = 2

    def __init__(self, message: str, *, file: str):
        super().__init__(f"{file}: {message}")
        self.file = file


class DataQualityError(LooplineError):
    """The validation gate rejected a whole batch. `summary` says why, in numbers."""

    exit_code = 3

    def __init__(self, message: str, *, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}


class ModelError(LooplineError):
    """A model, version or alias the user named does not exist or cannot be loaded."""

    exit_code = 2


class DriftError(LooplineError):
    """Drift inputs are unusable: a column missing or not numeric, a bad profile. Names the column."""

    exit_code = 2

    def __init__(self, message: str, *, column: str | None = None):
        super().__init__(message)
        self.column = column


class InvalidNameError(LooplineError):
    """A dataset or model name that cannot become a path in the lake (`../x`, `a/b`, `.hidden`, empty).
    Names the bad name and the allowed pattern."""

    exit_code = 2

    def __init__(self, message: str, *, name: object, what: str):
        super().__init__(message)
        self.name = name
        self.what = what


class WaitTimeoutError(LooplineError):
    """A bounded wait ran out (a concurrency slot, a child run): says what it waited for, how long, which
    setting bounds it and what to do. Not retried: the wait was already long."""

    exit_code = 1
