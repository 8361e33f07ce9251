"""effcn ensemble: members' class scores averaged, majority vote, bad members refused."""

from __future__ import annotations

import json

import pytest
import torch

from effcn.cli import main
from effcn.errors import EffcnError
from effcn.training.config_io import load_config
from effcn.training.evaluate import evaluate_ensemble, evaluate_run, prepare_run_evaluation, evaluate
from effcn.training.trainer import Trainer

from helpers import quick_overrides


@pytest.fixture(scope="module")
def members(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    runs = []
    for seed in (1, 2, 3):
        config = load_config(None, quick_overrides(synthetic_root, out, epochs=1, name=f"s{seed}")
                             + [f"train.seed={seed}"])
        runs.append(Trainer(config, quiet=True).fit()["run_dir"])
    return runs


def test_the_ensemble_averages_scores_and_votes(members, tmp_path, capsys):
    report = evaluate_ensemble(members)
    scores, labels = [], None
    for run in members:
        e = prepare_run_evaluation(run)
        r = evaluate(e.model, e.task, e.eval_set, predictions=True)
        scores.append(r["lengths"])
        labels = r["labels"]
        assert r["acc"] == pytest.approx(evaluate_run(run, write=False)["acc"])
    mean = torch.stack(scores).mean(0)
    assert report["acc"] == pytest.approx(float((mean.argmax(1) == labels).double().mean()))
    votes = torch.stack([s.argmax(1) for s in scores])                 # (3, N)
    majority = torch.mode(votes, dim=0).values
    clear = (votes == majority).sum(0) >= 2                            # 2 of 3 agree
    vote_pred = torch.where(clear, majority, mean.argmax(1))
    assert report["vote_acc"] == pytest.approx(float((vote_pred == labels).double().mean()))
    assert [m["acc"] for m in report["members"]] == \
        [evaluate_run(r, write=False)["acc"] for r in members]
    assert report["images"] == 80 and set(report["per_class_acc"]) <= {str(c) for c in range(10)}
    out = tmp_path / "ens.json"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "majority vote" in text and "class" in text
    saved = json.loads(out.read_text())
    assert saved["acc"] == report["acc"] and {"acc", "vote_acc", "members"} <= set(saved)


def test_members_of_other_classes_or_one_run_are_refused(members, synthetic_root, tmp_path,
                                                         capsys):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="wide") +
                         ["model.args.num_classes=12"])
    wide = Trainer(config, quiet=True).fit()["run_dir"]
    with pytest.raises(EffcnError, match="cannot form an ensemble: their classes differ"):
        evaluate_ensemble([members[0], wide])
    assert main(["ensemble", str(members[0])]) == 2
    assert "needs at least two runs" in capsys.readouterr().err
