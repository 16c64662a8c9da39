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


def test_an_unset_seed_and_id_offset_make_a_fresh_batch_each_run(tmp_path):
    """The demo run from the Prefect UI with its defaults: each run lands new ids and a new seed (a rerun of
    the same batch would be 99% duplicate ids and fail the gate); explicit values are kept as given."""
    from pathlib import Path

    from loopline.config import LifecycleConfig
    from loopline.data.contracts import load_contract
    from loopline.data.ingest import ingest_source
    from loopline.data.synthetic import generate_source, next_batch
    from loopline.storage.lake import Lake

    contract = load_contract(Path(__file__).resolve().parents[3] / "contracts" / "demo.yaml")
    lake = Lake(root=str(tmp_path / "lake"))
    cfg = LifecycleConfig(home=str(tmp_path), synthetic={"rows": 300})
    cfg.validation.data_docs = False
    seen = []
    for _ in range(2):
        synthetic = next_batch(cfg.synthetic, lake)
        seen.append((synthetic.seed, synthetic.id_offset))
        (result,) = ingest_source(str(generate_source(synthetic, tmp_path / "landing")), contract, lake, cfg)
        assert result.accepted and result.rows_quarantined == 0 and not result.duplicate_batch
    assert seen == [(0, 0), (1, 300)]
    pinned = SyntheticConfig(rows=300, seed=5, id_offset=7)
    assert next_batch(pinned, lake) == pinned
