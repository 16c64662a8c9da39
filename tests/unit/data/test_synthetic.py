import numpy as np

from loopline.config import SyntheticConfig
from loopline.data.synthetic import BAD_KINDS, generate_frame


def test_same_seed_same_rows_and_different_seed_differs():
    a = generate_frame(SyntheticConfig(rows=500, seed=1))
    b = generate_frame(SyntheticConfig(rows=500, seed=1))
    c = generate_frame(SyntheticConfig(rows=500, seed=2))
    assert a.equals(b) and not a.equals(c)


def test_label_has_learnable_signal():
    df = generate_frame(SyntheticConfig(rows=20_000, seed=0))
    # a single strong driver (f00 is 1.2 * latent_0 scaled) already separates the classes
    corr = np.corrcoef(df["f00"], df["churned"])[0, 1]
    assert abs(corr) > 0.2
    assert 0.2 < df["churned"].mean() < 0.8


def test_drift_knobs_move_distributions():
    base = generate_frame(SyntheticConfig(rows=5000, seed=0))
    drifted = generate_frame(
        SyntheticConfig(
            rows=5000, seed=0, drift_columns=["f02", "region"], drift_mean_shift=1.0, drift_category_mix=0.5
        )
    )
    assert drifted["f02"].mean() - base["f02"].mean() > 0.5 * base["f02"].std()
    assert (drifted["region"] == "west").mean() > (base["region"] == "west").mean() + 0.2
    assert drifted["f05"].equals(base["f05"])


def test_bad_fraction_injects_every_kind():
    df = generate_frame(SyntheticConfig(rows=2000, seed=0, bad_fraction=0.05))
    assert (df["age"] == 150).sum() >= 1
    assert (df["segment"] == "galaxy").sum() >= 1
    assert (df["f03"] == "not-a-number").sum() >= 1
    assert df["churned"].isna().sum() >= 1
    assert df["customer_id"].duplicated().sum() >= 1
    assert len(BAD_KINDS) == 10
