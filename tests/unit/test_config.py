import pytest

from loopline.config import LifecycleConfig, apply_overrides, config_to_flat_params, load_config
from loopline.errors import ConfigError


def test_set_overrides_parse_yaml_scalars():
    cfg = load_config(
        overrides=["training.max_steps=400", "training.lr=0.01", "synthetic.drift_columns=[f00, f01]"]
    )
    assert cfg.training.max_steps == 400 and cfg.training.lr == 0.01
    assert cfg.synthetic.drift_columns == ["f00", "f01"]


def test_config_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  max_steps: 10\n  batch_size: 64\n")
    cfg = load_config(p, ["training.max_steps=20"])
    assert (cfg.training.max_steps, cfg.training.batch_size) == (20, 64)


@pytest.mark.parametrize("item", ["training.max_steps=-1", "training.nope=1", "nosection.x=1", "garbage"])
def test_bad_override_names_the_key(item):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[item])
    assert "training" in str(err.value) or "nosection" in str(err.value) or "garbage" in str(err.value)


def test_bad_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_flat_params_cover_every_section_and_round_trip():
    cfg = LifecycleConfig()
    flat = config_to_flat_params(cfg)
    assert "training.max_steps" in flat and "drift.share_threshold" in flat
    again = LifecycleConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), ["training.seed=3"]))
    assert again.training.seed == 3


def test_config_schema_renders_as_a_form():
    schema = LifecycleConfig.model_json_schema()
    assert {"data", "training", "evaluation", "serving", "drift"} <= set(schema["properties"])
