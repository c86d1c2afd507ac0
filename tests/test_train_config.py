"""Training config: YAML files, --set overrides, type conversion and unknown keys."""
import os

import pytest
import yaml

from vig_pyg.train.config import Config, ConfigError, build_config, parse_override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["demo.yaml", "cifar10.yaml", "imagenet.yaml"]


def test_defaults_are_valid():
    cfg = build_config()
    assert cfg.model.name == "vig_ti" and cfg.data.dataset == "digits"
    assert cfg.optim.name == "adamw" and cfg.sched.name == "cosine"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_parse(name):
    cfg = build_config(os.path.join(REPO, "configs", name))
    assert isinstance(cfg, Config)
    # every key in the file is a real key: round trip through the full dict
    with open(os.path.join(REPO, "configs", name)) as fh:
        raw = yaml.safe_load(fh)
    full = cfg.to_dict()
    for section, body in raw.items():
        for key, value in (body or {}).items():
            assert key in full[section]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\ntrain:\n  epochs: 7\n")
    cfg = build_config(str(path), ["optim.lr=2e-4", "data.mean=[0.1, 0.2, 0.3]",
                                   "model.channels=48", "ema.enabled=false"])
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.data.mean == [0.1, 0.2, 0.3]
    assert cfg.model.options == {"channels": 48}
    assert cfg.to_dict()["model"]["channels"] == 48  # written beside the other model keys
    assert cfg.ema.enabled is False


def test_yaml_1e3_is_a_float(tmp_path):
    # YAML 1.1 (pyyaml) reads "1e-3" as a string; the key's type turns it into a float
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  clip_grad: 5\n")
    cfg = build_config(str(path))
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.clip_grad == 5.0


def test_model_options_are_the_models_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: pvig_ti\n  channels: [8, 16, 24, 32]\n  blocks: [1, 1, 1, 1]\n")
    cfg = build_config(str(path), ["model.reduce_ratios=[2, 1, 1, 1]"])
    assert cfg.model.options == {"channels": [8, 16, 24, 32], "blocks": [1, 1, 1, 1],
                                 "reduce_ratios": [2, 1, 1, 1]}
    # an override of the isotropic models only is refused for a pyramid one, by the models
    # package, which lists the valid ones
    with pytest.raises(ConfigError) as err:
        build_config(str(path), ["model.depth=4"])
    assert "depth" in str(err.value) and "reduce_ratios" in str(err.value)


@pytest.mark.parametrize("item, fragment", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("optimizer.lr=1", "unknown config key 'optimizer'"),
    ("train.epochs=abc", "config key 'train.epochs' expects int"),
    ("train.epochs=2.5", "config key 'train.epochs' expects int"),
    ("train.deterministic=maybe", "expects bool"),
    ("data.dataset=emnist", "data.dataset='emnist' is not supported"),
    ("model.conv=gat", "unknown graph convolution 'gat'; known: mr, edge, sage, gin, pyg:GATConv"),
    ("model.chanels=64", "chanels"),
    ("model.overrides={channels: 64}", "write the model's options directly"),
    ("model.drop_path=0.1", "drop_path"),
    ("model.imports=[no_such_module_xyz]", "cannot import 'no_such_module_xyz'"),
    ("model.img_size=64", "model.img_size is set by data.img_size"),
    ("train.amp=fp8", "pick one of auto, none, bf16, fp16"),
    ("optim.lr", "is not KEY=VALUE"),
    ("data.batch_size=0", "data.batch_size must be positive"),
])
def test_bad_overrides(item, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(None, [item])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        build_config(str(path))
    msg = str(err.value)
    assert "'optim.learning_rate'" in msg
    for key in ("lr", "weight_decay", "clip_grad"):
        assert key in msg


def test_unknown_section_lists_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        build_config(str(path))
    assert "'trainer'" in str(err.value) and "model, data, aug, optim" in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(str(bad))


def test_saved_config_round_trip():
    cfg = build_config(None, ["optim.lr=3e-4", "model.depth=2"])
    again = build_config(None, [], base=cfg.to_dict())
    assert again == cfg
    assert yaml.safe_load(cfg.to_yaml()) == cfg.to_dict()


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
