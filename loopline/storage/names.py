"""Dataset and model names: one rule for every name that becomes a path.

A name is a folder of the lake (`clean/D`, `predictions/M`, `checkpoints/M/...`), a file under
$LOOPLINE_HOME and a key on S3, so `../x`, `a/b`, `a\\b`, `.hidden` or an empty name would write outside
its place. Letters, digits, '.', '_' and '-' cover what MLflow and Delta users name things (`churn-v2`,
`credit_model`, `fraud.eu`).
"""

from __future__ import annotations

import re

from loopline.errors import InvalidNameError

MAX_NAME_LENGTH = 128
NAME_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}"  # and no ".." anywhere
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = (
    f"{NAME_PATTERN} and hold no '..' (1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', not starting "
    "with '.' or '-'; no '/' or '\\')"
)


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(name: object, what: str = "dataset") -> str:
    """`name` if it may become a path; else InvalidNameError naming it and the rule. `what`: "dataset",
    "model", or what else the name is."""
    if not is_valid_name(name):
        raise InvalidNameError(
            f"invalid {what} name {name!r}: a {what} name becomes a path in the lake, "
            f"so it must match {NAME_RULE}",
            name=name,
            what=what,
        )
    return name  # type: ignore[return-value]
