"""A run's files must agree: a checkpoint that holds another model, dataset or task than the
run's config.yaml is refused in eval, resume and export (exit 2, one sentence, nothing written);
a compatible checkpoint from elsewhere is allowed and named; runs of earlier versions still
open; ``effcn runs`` flags a run whose best.pt is not its own."""

from __future__ import annotations

import shutil

import pytest

from effcn.training.checkpoint import load_checkpoint, save_checkpoint
from effcn.training.config_io import load_yaml, save_yaml
from helpers import (REPO, assert_one_sentence_error, effcn_in_process, snapshot,
                     write_untrained_run)

LEGACY = REPO / "tests" / "fixtures" / "legacy"
NOT_OURS = ("the checkpoint does not belong to this run: put back the run's own checkpoint, or "
            "open the run it came from.")


@pytest.fixture(scope="module")
def runs(synthetic_root, tmp_path_factory):
    """Untrained runs on the synthetic digits: an Efficient-CapsNet (the run that gets the
    wrong checkpoint), a CNN, the same Efficient-CapsNet on another dataset, and one with 5
    classes."""
    base = tmp_path_factory.mktemp("agreement")
    return {"caps": write_untrained_run(base / "caps", synthetic_root, "efficient_capsnet_tiny"),
            "cnn": write_untrained_run(base / "cnn", synthetic_root, "cnn_baseline_tiny"),
            "mnist": write_untrained_run(base / "mnist", synthetic_root, "efficient_capsnet_tiny",
                                         ["data.dataset=mnist"], seed=1),
            "five": write_untrained_run(base / "five", synthetic_root, "efficient_capsnet_tiny",
                                        num_classes=5)}


def swapped(runs, tmp_path, other: str, name: str = "best.pt"):
    """A copy of the Efficient-CapsNet run whose checkpoints/``name`` is run ``other``'s."""
    run = shutil.copytree(runs["caps"], tmp_path / "run")
    shutil.copy(runs[other] / "checkpoints" / name, run / "checkpoints" / name)
    return run


COMMANDS = {"eval": lambda run: ["eval", run],
            "resume": lambda run: ["train", "--resume", run, "--quiet"],
            "export": lambda run: ["export", run, "--format", "torchscript"]}
READERS = {"explore": lambda run: ["explore", run],
           "visualize": lambda run: ["visualize", run],
           "ensemble": lambda run: ["ensemble", run, run]}


@pytest.mark.parametrize("command", [*COMMANDS, *READERS])
def test_a_cnns_best_pt_in_an_efficient_capsnet_run_is_refused(runs, tmp_path, capsys, command):
    run = swapped(runs, tmp_path, "cnn")
    before = snapshot(run)
    code, out, err = effcn_in_process({**COMMANDS, **READERS}[command](run), capsys)
    best = run / "checkpoints" / "best.pt"
    assert_one_sentence_error(code, err, f"{best} holds a cnn_baseline_tiny trained on idx, but "
                                         f"{run / 'config.yaml'} describes efficient_capsnet_tiny "
                                         f"on idx; {NOT_OURS}")
    assert snapshot(run) == before and not out


@pytest.mark.parametrize("other, held, described", [
    ("mnist", "an efficient_capsnet_tiny trained on mnist", "efficient_capsnet_tiny on idx"),
    ("five", "an efficient_capsnet_tiny (num_classes=5) trained on idx",
     "efficient_capsnet_tiny (num_classes=10) on idx")])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_of_another_dataset_or_shape_is_refused(runs, tmp_path, capsys, command,
                                                             other, held, described):
    run = swapped(runs, tmp_path, other)
    before = snapshot(run)
    code, _, err = effcn_in_process(COMMANDS[command](run), capsys)
    assert_one_sentence_error(code, err, f"{run / 'checkpoints' / 'best.pt'} holds {held}, but "
                                         f"{run / 'config.yaml'} describes {described}; "
                                         f"{NOT_OURS}")
    assert snapshot(run) == before


def test_resume_checks_last_pt_too(runs, tmp_path, capsys):
    run = swapped(runs, tmp_path, "cnn", "last.pt")
    before = snapshot(run)
    code, _, err = effcn_in_process(COMMANDS["resume"](run), capsys)
    assert_one_sentence_error(code, err, f"{run / 'checkpoints' / 'last.pt'} holds a "
                                         f"cnn_baseline_tiny")
    assert snapshot(run) == before


def test_a_checkpoint_passed_by_path_inside_the_run_must_belong_too(runs, tmp_path, capsys):
    run = swapped(runs, tmp_path, "mnist")
    code, _, err = effcn_in_process(["eval", run / "checkpoints" / "best.pt"], capsys)
    assert_one_sentence_error(code, err, NOT_OURS)


def test_a_compatible_checkpoint_from_elsewhere_is_allowed_and_named(runs, tmp_path, capsys):
    """The same architecture trained on another dataset, passed with --checkpoint FILE: it is
    evaluated with the run's config (the run's test set), and the report names it."""
    run = shutil.copytree(runs["caps"], tmp_path / "run")
    foreign = runs["mnist"] / "checkpoints" / "best.pt"
    code, out, err = effcn_in_process(["eval", run, "--checkpoint", foreign], capsys)
    assert code == 0, err
    note = (f"{foreign} is not this run's own checkpoint (an efficient_capsnet_tiny trained on "
            f"mnist); it is used with {run / 'config.yaml'}")
    assert f"idx test: accuracy" in out and f"[{foreign}, epoch 1" in out
    assert f"note: {note}" in out.splitlines()
    from effcn.io import read_json
    report_path = run / "eval" / "test_mnist-best.json"       # never the run's own test_best
    assert f"written: {report_path}" in out
    report = read_json(report_path)
    assert report["checkpoint"] == str(foreign) and report["checkpoint_note"] == note
    assert report["dataset"] == "idx"                        # the run's test set
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["test_mnist-best.json"]
    # the run's own checkpoint: no note
    code, out, err = effcn_in_process(["eval", run], capsys)
    assert code == 0 and "note:" not in out
    from effcn.io import read_json
    assert "checkpoint_note" not in read_json(run / "eval" / "test_best.json")


def test_a_checkpoint_outside_any_run_opens_as_before(runs, tmp_path, capsys):
    """A .pt file with no config.yaml beside it: nothing to agree with; its own config is used."""
    loose = tmp_path / "loose" / "model.pt"
    loose.parent.mkdir()
    shutil.copy(runs["cnn"] / "checkpoints" / "best.pt", loose)
    code, out, err = effcn_in_process(["eval", loose], capsys)
    assert code == 0, err
    assert "[model.pt, epoch 1" in out and "note:" not in out


@pytest.mark.parametrize("other, message", [
    ("cnn", "holds a cnn_baseline_tiny trained on idx whose tensors do not fit the "
            "efficient_capsnet_tiny of {config} ("),
    ("five", "holds an efficient_capsnet_tiny (num_classes=5) trained on idx whose tensors do not "
             "fit the efficient_capsnet_tiny of {config} (decoder.net.0.weight: (32, 80) in the "
             "checkpoint, (32, 160) in the model); pass a checkpoint of the same architecture "
             "and task, or open the run it came from.")])
def test_an_incompatible_checkpoint_from_elsewhere_is_refused(runs, tmp_path, capsys, other,
                                                              message):
    run = shutil.copytree(runs["caps"], tmp_path / "run")
    before = snapshot(run)
    code, _, err = effcn_in_process(["eval", run, "--checkpoint",
                                     runs[other] / "checkpoints" / "best.pt"], capsys)
    assert_one_sentence_error(code, err, message.format(config=run / "config.yaml"))
    assert snapshot(run) == before


def test_open_run_and_the_library_refuse_too(runs, tmp_path):
    from effcn.errors import CheckpointError
    from effcn.training.resume import resumable_run
    from effcn.training.runs import disagreement, open_run
    run = swapped(runs, tmp_path, "cnn")
    with pytest.raises(CheckpointError, match="does not belong to this run"):
        open_run(run, device="cpu")
    with pytest.raises(CheckpointError, match="does not belong to this run"):
        resumable_run(run)
    assert "holds a cnn_baseline_tiny" in disagreement(run)
    assert disagreement(runs["caps"], ("best", "last", "step")) is None
    assert open_run(runs["caps"], device="cpu").note is None


def test_effcn_runs_flags_a_run_whose_best_pt_is_not_its_own(runs, tmp_path, capsys):
    from effcn.tools.runs import list_runs
    parent = tmp_path / "runs"
    for name in ("caps", "cnn"):
        shutil.copytree(runs[name], parent / name)
        (parent / name / "metrics.jsonl").write_text("")
    shutil.copy(runs["cnn"] / "checkpoints" / "best.pt", parent / "caps" / "checkpoints")
    rows = {r["name"]: r for r in list_runs(parent)}
    assert rows["cnn"]["disagreement"] is None and rows["cnn"]["status"] == "unfinished"
    assert rows["caps"]["status"] == "unfinished; best.pt is not this run's"
    assert "holds a cnn_baseline_tiny" in rows["caps"]["disagreement"]
    code, out, _ = effcn_in_process(["runs", parent], capsys)
    assert code == 0
    assert f"caps: {rows['caps']['disagreement']}" in out.splitlines()


def old_format(run, legacy_yaml: str, root, out) -> dict:
    """Rewrite ``run``'s config.yaml and its checkpoints' configs as an earlier version wrote
    them (the fixture's flat task fields); returns that config."""
    old = load_yaml(LEGACY / legacy_yaml)
    old["data"]["root"], old["run"]["dir"], old["run"]["name"] = str(root), str(out), run.name
    save_yaml(old, run / "config.yaml")
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        state = load_checkpoint(path)
        state.pop("format")
        save_checkpoint(path, {**state, "config": old})
    return old


def test_a_run_of_an_earlier_version_still_opens(synthetic_root, tmp_path, capsys):
    """Config in the flat form of tests/fixtures/legacy, in config.yaml and in the checkpoints:
    it belongs (the translated task is the same), so it evaluates and may be resumed."""
    from effcn.training.resume import resumable_run
    from effcn.training.runs import disagreement
    semi = ["task.name=semi_supervised", "task.args.labeled=20", "task.args.labeled_batch_size=8",
            "task.args.unlabeled_recon_weight=0.392", "task.args.consistency_weight=1"]
    run = write_untrained_run(tmp_path / "semi", synthetic_root, "efficient_capsnet_tiny", semi)
    old_format(run, "semi_run_config.yaml", synthetic_root, tmp_path)
    assert disagreement(run, ("best", "last")) is None
    assert resumable_run(run).path == run
    code, out, err = effcn_in_process(["eval", run], capsys)
    assert code == 0, err
    assert "note:" not in out and "task.name=semi_supervised" in err


def test_an_earlier_versions_checkpoint_of_another_task_is_refused(synthetic_root, tmp_path,
                                                                  capsys):
    """The old flat fields are translated before comparing: an old semi-supervised best.pt in
    a classification run is another task."""
    run = write_untrained_run(tmp_path / "plain", synthetic_root, "efficient_capsnet_tiny")
    old = load_yaml(LEGACY / "semi_run_config.yaml")
    best = run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    state.pop("format")
    save_checkpoint(best, {**state, "config": old})
    code, _, err = effcn_in_process(["eval", run], capsys)
    assert_one_sentence_error(code, err, "trained on idx (semi_supervised task), but "
                                         f"{run / 'config.yaml'} describes efficient_capsnet_tiny "
                                         f"on idx (classification task); {NOT_OURS}")
