"""Traffic split: the challenger's share is its weight, a request key is sticky, shadow never answers."""

from types import SimpleNamespace

import pytest

from loopline.serving.router import CHALLENGER, CHAMPION, Router, key_share


def slot(role: str):
    return SimpleNamespace(role=role)


def router(weight: float, shadow: bool = False) -> Router:
    r = Router(challenger_weight=weight, shadow=shadow, seed=1)
    r.champion, r.challenger = slot(CHAMPION), slot(CHALLENGER)
    return r


@pytest.mark.parametrize("weight", [0.1, 0.5])
def test_split_ratio_is_the_weight_over_2000_requests(weight):
    r = router(weight)
    share = sum(r.pick(None)[0].role == CHALLENGER for _ in range(2000)) / 2000
    # binomial sd at n=2000 is <= 0.012: 4 sd
    assert abs(share - weight) < 0.045


def test_keys_are_sticky_and_split_by_weight():
    r = router(0.2)
    keys = [f"user-{i}".encode() for i in range(2000)]
    first = [r.pick(k)[0].role for k in keys]
    assert first == [r.pick(k)[0].role for k in keys]  # the same key, the same model
    assert abs(first.count(CHALLENGER) / 2000 - 0.2) < 0.045
    assert all((key_share(k) < 0.2) == (role == CHALLENGER) for k, role in zip(keys, first, strict=True))


def test_shadow_answers_from_the_champion_and_mirrors_to_the_challenger():
    r = router(0.0, shadow=True)
    answer, shadow = r.pick(b"k")
    assert answer.role == CHAMPION and shadow.role == CHALLENGER
    r = router(0.3, shadow=True)
    picks = [r.pick(None) for _ in range(2000)]
    assert all(a.role == CHAMPION for a, _ in picks)
    assert abs(sum(s is not None for _, s in picks) / 2000 - 0.3) < 0.045


def test_no_challenger_means_no_split_and_no_model_is_a_lookup_error():
    r = Router(challenger_weight=0.5)
    with pytest.raises(LookupError):
        r.pick(None)
    r.champion = slot(CHAMPION)
    assert all(r.pick(None) == (r.champion, None) for _ in range(50))
