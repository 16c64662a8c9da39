"""Which loaded model answers a request: the champion, or the challenger for a weighted share.

A `Slot` is one loaded model version with its own micro-batcher. The `Router` holds the champion slot and
an optional challenger slot; swapping a slot is one attribute assignment on the event loop, so a request
sees either the old or the new model, never a mix, and requests already queued on the old slot finish on
it before it is unloaded.

Split: with `challenger_weight` w, a request goes to the challenger with probability w. A request that
carries a key (`X-Request-Key`, e.g. a user id) is sticky: the key's hash decides, so a canary user stays
on one model. Shadow mode answers every request from the champion and also scores the challenger for a
share w of them (all of them when w is 0), logging the challenger's predictions without returning them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from loopline.serving.batcher import MicroBatcher
from loopline.serving.model import LoadedModel

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


@dataclass
class Slot:
    model: LoadedModel
    batcher: MicroBatcher
    role: str


def key_share(key: bytes) -> float:
    """A stable number in [0, 1) for a request key (the same key always lands on the same side)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64


class Router:
    def __init__(self, challenger_weight: float = 0.0, shadow: bool = False, seed: int | None = None):
        self.champion: Slot | None = None
        self.challenger: Slot | None = None
        self.challenger_weight = challenger_weight
        self.shadow = shadow
        self._random = random.Random(seed)

    def pick(self, key: bytes | None) -> tuple[Slot, Slot | None]:
        """(the slot that answers, a slot that shadow-scores the same rows or None)."""
        champion, challenger = self.champion, self.challenger
        if champion is None:
            raise LookupError("no model is loaded")
        if challenger is None:
            return champion, None
        weight = self.challenger_weight
        if self.shadow and weight == 0:
            return champion, challenger
        u = key_share(key) if key else self._random.random()
        if u >= weight:
            return champion, None
        return (champion, challenger) if self.shadow else (challenger, None)

    def slots(self) -> list[Slot]:
        return [s for s in (self.champion, self.challenger) if s is not None]
