"""Config files and --set overrides: types, unknown keys, ranges."""

from pathlib import Path

import pytest

from effcn.errors import ConfigError
from effcn.training.config import Config
from effcn.training.config_io import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def test_paper_config_matches_spec():
    c = load_config(REPO / "configs" / "mnist.yaml")
    assert (c.train.batch_size, c.train.epochs, c.optim.name, c.optim.lr) == (16, 150, "adam", 5e-4)
    assert (c.schedule.name, c.schedule.decay, c.schedule.min_lr) == ("exp_decay", 0.97, 5e-5)
    assert c.train.recon_weight == 0.392 and c.data.val_size == 5000 and c.data.augment == "paper"


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_overrides_are_typed():
    c = load_config(None, ["train.epochs=3", "optim.lr=1e-3", "train.progress=false",
                           "data.root=/tmp/x", "model.args.routing=uniform", "optim.betas=[0.8, 0.9]"])
    assert c.train.epochs == 3 and c.optim.lr == 1e-3 and c.train.progress is False
    assert c.data.root == "/tmp/x" and c.model.args == {"routing": "uniform"}
    assert c.optim.betas == (0.8, 0.9)
    assert load_config(None, ["data.root=null"]).data.root is None


def test_on_off_yes_no_stay_words_for_string_fields(tmp_path):
    # YAML 1.1 would read "off" as False, and train.amp would get the string "False".
    c = load_config(None, ["train.amp=off", "train.channels_last=off", "train.progress=yes"])
    assert c.train.amp == "off" and c.train.channels_last is False and c.train.progress is True
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n  compile: on\n  progress: false\n")
    c = load_config(path)
    assert c.train.amp == "off" and c.train.compile is True and c.train.progress is False


@pytest.mark.parametrize("override, message", [
    ("train.batchsize=3", r"unknown config key train\.batchsize; did you mean train\.batch_size\?"),
    ("trian.epochs=3", r"unknown config section 'trian'; did you mean 'train'\?"),
    ("train.epochs=ten", r"train\.epochs expects an integer, got 'ten'"),
    ("train.epochs=2.5", r"train\.epochs expects an integer"),
    ("optim.lr=-0.1", r"optim\.lr must be positive"),
    ("train.batch_size=0", r"train\.batch_size must be positive"),
    ("optim.name=adamax", r"optim\.name must be one of adam, adamw, sgd"),
    ("schedule.name=linear", r"schedule\.name must be one of"),
    ("train.progress=maybe", r"train\.progress expects true or false"),
    ("model.name=capsnet9000", r"unknown model 'capsnet9000'"),
    ("model.args.num_clases=5", r"unknown config key model\.args\.num_clases; did you mean model\.args\.num_classes\?"),
    ("model.args.routing=dynamic", r"routing must be one of"),
    ("data.val_size=-1", r"data\.val_size must be positive"),
    ("data.val_size=0", r"data\.val_size must be positive, got 0"),
    ("train.epochs", r"not of the form section\.key=value"),
    ("train=3", r"names a section, not a key"),
])
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key train\.epoch; did you mean train\.epochs\?"):
        load_config(typo)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict():
    c = load_config(None, ["train.epochs=7", "model.args.routing=uniform"])
    assert config_from_dict(c.to_dict()) == c
    assert Config() == config_from_dict(Config().to_dict())


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=mnistt"], r"data\.dataset='mnistt' is not a known dataset; did you mean mnist\?"),
    (["data.augment=rotat"], r"data\.augment='rotat': Unknown augmentation part 'rotat'"),
    (["data.dataset=multimnist"], r"data\.augment=paper does not apply to multimnist"),
])
def test_data_fields_are_checked_when_the_config_is_loaded(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_sweep_with_a_bad_dataset_fails_before_any_run(tmp_path, capsys):
    from effcn.cli import main
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"dir: {tmp_path / 'out'}\nset: [data.dataset=mnsit]\n"
                     f"grid: {{train.epochs: [1, 2]}}\n")
    assert main(["sweep", str(sweep)]) == 2
    assert "did you mean mnist?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_overrides_apply_in_one_place_for_train_resume_and_eval():
    from effcn.training.config_io import apply_overrides
    config = apply_overrides(Config(), ["train.epochs=3", "model.args.routing=uniform"])
    assert config.train.epochs == 3 and config.model.args == {"routing": "uniform"}
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        apply_overrides(Config(), ["train.epochs"])
