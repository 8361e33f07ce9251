"""Config files and --set overrides: types, unknown keys, ranges."""

import dataclasses
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


# ------------------------------------------------------------------------------ the task section
def test_the_task_is_named_with_classification_the_default():
    assert Config().task.name == "classification" and Config().task.args == {}
    c = load_config(REPO / "configs" / "multimnist_cpu.yaml", ["task.args.partners=3"])
    assert (c.data.dataset, c.task.name) == ("multimnist", "multimnist")
    assert c.task.args == {"partners": 3, "test_digits": 1000}
    assert load_config(REPO / "configs" / "mnist_numbers3_cpu.yaml").task.args == {"digits": 3}


def test_task_args_are_typed_by_the_tasks_args_dataclass():
    c = load_config(None, ["task.name=semi_supervised", "task.args.labeled=20",
                           "task.args.consistency_weight=1", "task.args.consistency_on=capsules"])
    assert c.task.args == {"labeled": 20, "consistency_weight": 1.0, "consistency_on": "capsules"}
    assert isinstance(c.task.args["consistency_weight"], float)
    from effcn.training.tasks import SemiSupervisedTask, task_args
    assert task_args(c) == SemiSupervisedTask.Args(labeled=20, consistency_weight=1.0,
                                                   consistency_on="capsules")
    assert config_from_dict(c.to_dict()) == c


MULTIMNIST = ["data.dataset=multimnist", "data.augment=none", "task.name=multimnist"]


@pytest.mark.parametrize("overrides, message", [
    (["task.name=multimnst"], "task.name='multimnst' is not a known task; did you mean "
     "multimnist? Otherwise use one of classification, semi_supervised, multimnist, numbers."),
    ([*MULTIMNIST, "task.args.partner=3"], "unknown config key task.args.partner; did you mean "
     "task.args.partners? valid keys are: epoch_pairs, partners, same_label, test_digits, "
     "test_style."),
    ([*MULTIMNIST, "task.args.partners=three"], "--set: task.args.partners expects an integer, "
     "got 'three'; fix the value."),
    ([*MULTIMNIST, "task.args.partners=0"], "task.args do not make a valid multimnist task: "
     "partners must be at least 1, got 0."),
    ([*MULTIMNIST, "task.args.test_style=random"], "task.args do not make a valid multimnist "
     "task: test_style must be one of authors, resampled, got 'random'."),
    (["task.args.partners=3"], "unknown config key task.args.partners; the classification task "
     "takes no task.args."),
    (["task.args=3"], "--set: task.args expects a mapping, got 3; fix the value."),
    (["task.name=multimnist", "data.augment=none"], "task.name=multimnist needs "
     "data.dataset=multimnist, got mnist; set data.dataset=multimnist or choose another task."),
    (["task.name=classification", "data.dataset=multimnist"], "data.dataset=multimnist is the "
     "multimnist task's dataset, not classification's; set task.name=multimnist."),
])
def test_task_mistakes_are_one_sentence(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value) == message


# ------------------------------------------------------- configs of earlier versions still load
LEGACY = REPO / "tests" / "fixtures" / "legacy"
OLD_MULTIMNIST_YAML = """\
model: {name: efficient_capsnet_multimnist, args: {bn_momentum: 0.1}}
data: {dataset: multimnist, val_size: 5000, augment: none, multimnist_partners: 1,
       multimnist_test_digits: 1000}
optim: {name: adam, lr: 1.0e-3}
schedule: {name: exp_decay, decay: 0.6, min_lr: 5.0e-5}
train: {epochs: 2, batch_size: 32, recon_weight: 0.196, seed: 42}
run: {dir: runs/multimnist_cpu}
"""


def one_translation_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("effcn: read earlier task fields as the task "
                                               "section ("), err
    return err[0]


def test_an_old_style_config_file_is_translated_with_one_line(tmp_path, capsys):
    """configs/multimnist_cpu.yaml as it was written before the task section."""
    old = tmp_path / "multimnist_cpu.yaml"
    old.write_text(OLD_MULTIMNIST_YAML)
    capsys.readouterr()
    assert load_config(old) == load_config(REPO / "configs" / "multimnist_cpu.yaml")
    line = one_translation_line(capsys)
    assert ("task.name=multimnist, data.multimnist_partners -> task.args.partners, "
            "data.multimnist_test_digits -> task.args.test_digits" in line)
    load_config(REPO / "configs" / "multimnist_cpu.yaml", ["train.epochs=1"])
    assert capsys.readouterr().err == ""                     # this version's files: no line


def test_an_old_run_directorys_config_is_translated(capsys):
    """config.yaml as the earlier version saved it: every field, those of other tasks too."""
    from effcn.training.config_io import load_yaml
    old = config_from_dict(load_yaml(LEGACY / "multimnist_cpu_run_config.yaml"))
    line = one_translation_line(capsys)
    assert "saved config: task.name=multimnist" in line and "data.digits" not in line
    new = load_config(REPO / "configs" / "multimnist_cpu.yaml")
    # saved when data.download defaulted to false
    assert old.task.name == "multimnist" and old.model == new.model
    assert old.data == dataclasses.replace(new.data, download=False)
    assert old.task.args == {"partners": 1, "test_digits": 1000, "same_label": True,
                             "epoch_pairs": 0, "test_style": "authors"}
    from effcn.training.tasks import task_args
    assert task_args(old) == task_args(new)


@pytest.mark.parametrize("overrides, task, args", [
    (["data.labeled=100", "train.consistency_weight=1"], "semi_supervised",
     {"labeled": 100, "consistency_weight": 1.0}),
    (["train.unlabeled_recon_mask=none"], "classification", {}),   # not a switch: ignored
    (["data.labeled=0"], "classification", {}),                   # the default: dropped
    (["data.dataset=mnist_numbers", "data.digits=1", "model.name=efficient_capsnet_mnist"],
     "numbers", {"digits": 1}),
    (["data.dataset=multimnist", "data.augment=none", "data.multimnist_epoch_pairs=64"],
     "multimnist", {"epoch_pairs": 64}),
])
def test_old_style_overrides_are_translated(overrides, task, args, capsys):
    capsys.readouterr()
    c = load_config(None, overrides)
    assert (c.task.name, c.task.args) == (task, args)
    one_translation_line(capsys)


def test_old_style_overrides_on_a_config_of_this_version(capsys):
    """--set data.multimnist_partners=2 on configs/multimnist_cpu.yaml (sweeps, effcn eval)."""
    c = load_config(REPO / "configs" / "multimnist_cpu.yaml", ["data.multimnist_partners=2"])
    assert c.task.args == {"partners": 2, "test_digits": 1000}
    assert "--set: task.name=multimnist, data.multimnist_partners -> task.args.partners" in \
        one_translation_line(capsys)
    with pytest.raises(ConfigError, match=r"^--set: data\.labeled=10 is a setting of the "
                                          r"semi_supervised task \(task\.args\.labeled\), not of "
                                          r"multimnist; drop it\.$"):
        load_config(REPO / "configs" / "multimnist_cpu.yaml", ["data.labeled=10"])
    with pytest.raises(ConfigError, match=r"^--set: data\.multimnist_partners expects an integer"):
        load_config(REPO / "configs" / "multimnist_cpu.yaml", ["data.multimnist_partners=x"])


def test_an_old_run_directory_resumes_exactly(synthetic_root, tmp_path, capsys):
    """A semi-supervised run whose config.yaml is the earlier version's resumes as if it had
    never stopped, and its config.yaml is then this version's."""
    from effcn.cli import main
    from effcn.training.checkpoint import load_checkpoint, save_checkpoint
    from effcn.training.config_io import load_yaml, save_yaml
    from effcn.training.trainer import Trainer
    from helpers import quick_overrides, same_state
    semi = ["task.name=semi_supervised", "task.args.labeled=20", "task.args.labeled_batch_size=8",
            "task.args.unlabeled_recon_weight=0.392", "task.args.consistency_weight=1"]
    Trainer(load_config(None, quick_overrides(synthetic_root, tmp_path, 2, "clean") + semi),
            quiet=True).fit()
    Trainer(load_config(None, quick_overrides(synthetic_root, tmp_path, 1, "semi") + semi),
            quiet=True).fit()
    old = load_yaml(LEGACY / "semi_run_config.yaml")        # epochs: 2
    old["data"]["root"], old["run"]["dir"] = str(synthetic_root), str(tmp_path)
    save_yaml(old, tmp_path / "semi" / "config.yaml")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "semi"), "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("effcn:")]
    assert len(err) == 1 and "saved config: task.name=semi_supervised" in err[0], err
    clean, resumed = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")
                      for n in ("clean", "semi"))
    assert resumed["epoch"] == clean["epoch"] == 2
    for key in ("model", "optimizer", "scheduler", "best"):
        assert same_state(resumed[key], clean[key]), key
    assert load_yaml(tmp_path / "semi" / "config.yaml")["task"] == {
        "name": "semi_supervised", "args": {"labeled": 20, "labeled_seed": 0,
                                            "labeled_batch_size": 8,
                                            "unlabeled_recon_weight": 0.392,
                                            "unlabeled_recon_mask": "predicted",
                                            "consistency_weight": 1.0, "consistency_on": "lengths"}}
    # a checkpoint of the earlier version holds the old config too: effcn eval reads it
    best = tmp_path / "semi" / "checkpoints" / "best.pt"
    save_checkpoint(best, {**load_checkpoint(best), "config": old})
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "semi")]) == 0
    assert "saved config: task.name=semi_supervised" in one_translation_line(capsys)
