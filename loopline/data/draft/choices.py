"""The label, the task and the id, chosen from the column profiles (an id is never invented)."""

from __future__ import annotations

import re
from typing import Any

from loopline.data.draft.columns import MAX_UNPARSED_SHARE, _Profile
from loopline.data.draft.render import _names, _short
from loopline.errors import ConfigError

MAX_CLASSES = 20  # an int/string label with up to this many distinct values is multiclass


LABEL_NAMES = ("label", "target", "y", "class", "outcome")


_ID_NAMES = ("id", "key", "uuid")


_ID_SUFFIX = re.compile(r"(?:[_\-. ](?:id|key|uuid)|[a-z0-9](?:Id|ID|Key|Uuid))$")


def _pick_label(profiles: dict[str, _Profile], label: str | None, sample: str) -> str:
    if label is not None:
        if label not in profiles:
            raise ConfigError(
                f"--label {label!r} is not a column of {sample}; its columns: {_names(profiles)}"
            )
        return label
    by_name = {c.lower(): c for c in reversed(list(profiles))}
    found = [by_name[n] for n in LABEL_NAMES if n in by_name]
    if not found:
        raise ConfigError(
            f"{sample}: no column is named like a label ({', '.join(LABEL_NAMES)}); pass --label COL to say which "
            f"column the model predicts (columns: {_names(profiles)})"
        )
    if len(found) > 1:
        raise ConfigError(
            f"{sample}: several columns could be the label ({', '.join(found)}); pass --label COL"
        )
    return found[0]


def _infer_task(p: _Profile) -> tuple[str, list[Any] | None, str]:
    """(task, classes or None, the reason in words) for the label column."""
    where = f"label {p.name!r}"
    if p.nulls:
        raise ConfigError(
            f"{where} is empty in {p.nulls} row(s) of the sample; a label cannot be null. Drop those rows from "
            "the sample, or pass --label for another column"
        )
    if p.type == "timestamp":
        raise ConfigError(
            f"{where} holds timestamps; a label is a class or a number. Pass --label for another column"
        )
    if p.type == "bool":
        return "binary", [False, True], f"{where} is bool"
    classes = sorted(p.present.unique().tolist())
    kind = {"int": "ints", "float": "floats", "bool": "bools"}.get(p.type, "strings")
    if len(classes) == 1:
        raise ConfigError(
            f"{where} has one value ({classes[0]!r}) in the sample; a model needs at least two. Use a sample "
            "with every class, or pass --label for another column"
        )
    if len(classes) == 2:
        return "binary", classes, f"{where} has 2 distinct {kind}"
    if p.type in ("int", "string", "category") and len(classes) <= MAX_CLASSES:
        return "multiclass", classes, f"{where} has {len(classes)} distinct {kind} (<= {MAX_CLASSES})"
    if p.type in ("int", "float"):
        more = f"{len(classes)} distinct ints (> {MAX_CLASSES})" if p.type == "int" else "float"
        return "regression", None, f"{where} is {more}"
    raise ConfigError(
        f"{where} has {len(classes)} distinct strings: more than {MAX_CLASSES} classes, and not a number to "
        "regress on. Pass --label for another column, or draft with a coarser label"
    )


def _pick_id(
    profiles: dict[str, _Profile], id_column: str | None, label: str, sample: str
) -> tuple[str, str]:
    if id_column is not None:
        if id_column not in profiles:
            raise ConfigError(
                f"--id {id_column!r} is not a column of {sample}; its columns: {_names(profiles)}"
            )
        if id_column == label:
            raise ConfigError(
                f"--id {id_column!r} is also the label; the id and the label are different columns"
            )
        p = profiles[id_column]
        problems = []
        if p.nulls:
            problems.append(f"{p.nulls} null value(s)")
        few = p.duplicates <= MAX_UNPARSED_SHARE * len(p.typed)  # a stray repeat the gate quarantines
        if p.duplicates and (p.nulls or not few):
            problems.append(f"{p.duplicates} duplicate value(s) (rows repeating an earlier {p.type} id)")
        if problems:
            raise ConfigError(
                f"--id {id_column!r} is not a usable id in {sample}: {' and '.join(problems)}; an id is unique "
                "and never null (the gate quarantines the rest). Fix the sample, or name another column"
            )
        if p.duplicates:
            return id_column, (
                f"given with --id; non-null, and unique but for {p.duplicates} repeated value(s) in the sample: "
                "the gate quarantines a repeat (first arrival wins)"
            )
        return id_column, "given with --id; unique and non-null in the sample"
    rejected: dict[str, list[str]] = {}
    candidates: list[str] = []
    for name, p in profiles.items():
        if name == label:
            continue
        if p.type not in ("int", "string"):
            rejected.setdefault("not int or string", []).append(f"{name} ({p.type})")
        elif p.nulls:
            rejected.setdefault("has nulls", []).append(f"{name} ({p.nulls} null)")
        elif p.duplicates:
            rejected.setdefault("not unique", []).append(f"{name} ({p.duplicates} duplicate)")
        else:
            candidates.append(name)
    if not candidates:
        why = "; ".join(f"{_short(names)}: {reason}" for reason, names in rejected.items())
        raise ConfigError(
            f"{sample}: no column can be the id (unique, non-null, int or string). Rejected: "
            f"{why or 'no column besides the label'}. Add an id column to the data (e.g. a row number assigned "
            "once, at the source), or pass --id COL to name one"
        )
    best = min(candidates, key=lambda c: (_id_rank(c), candidates.index(c)))
    others = [c for c in candidates if c != best]
    also = f"; also unique: {_short(others)}" if others else ""
    if _id_rank(best) < 2:
        return best, f"named like an id, unique and non-null in the sample{also}"
    return best, f"the first unique, non-null int/string column (none is named like an id): check it{also}"


def _id_rank(name: str) -> int:
    if name.lower() in _ID_NAMES:
        return 0
    return 1 if _ID_SUFFIX.search(name) or _ID_SUFFIX.search(name.lower()) else 2
