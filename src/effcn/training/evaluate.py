"""Evaluation as a library: one function for every task, one report.

    evaluate(model, task, eval_set)          loss parts, accuracy and per-class accuracy of a set
    evaluate_run(RUN, split="test")          a run's checkpoint on its test (or val) split, with
                                             affNIST side by side for 40x40 MNIST models; writes
                                             RUN/eval/<split>_<checkpoint>.json
    evaluate_ensemble([RUN, ...])            runs as an ensemble: mean class scores, vote

The trainer's validation and final test call ``evaluate`` too, so the test figures of
summary.json and of ``effcn eval`` are the same computation: on the same checkpoint, in the same
precision (fp32 unless asked otherwise), they agree to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EffcnError
from ..io import write_json
from . import fastpath
from .rundir import RunDir
from .runs import OpenedRun, open_run
from .splits import TEST_SELECTED, load_eval_split
from .tasks import Batch, EvalSet, Task, task_for
from .tasks.classification import ImageSet


@torch.no_grad()
def evaluate(model, task: Task, eval_set: EvalSet, batch_size: int = 500,
             amp_dtype: torch.dtype | None = None, class_names=None,
             predictions: bool = False, fixed_shape: bool | None = None,
             forward=None) -> dict:
    """Loss parts and accuracy (the task's metric) of ``model`` on ``eval_set``.

    Returns {"loss", "margin", "recon", "acc", "images", "per_class_acc"}; per-class accuracy is
    the share of each class's true labels that were found. With ``predictions``, also
    "predictions" (N,), "lengths" (N, classes) and "labels" (N,) or (N, K) tensors.
    ``amp_dtype``: autocast dtype of the forward (None: fp32). ``fixed_shape`` (default: on
    CUDA): every forward sees the same batch shape, the last batch padded with zero images whose
    outputs are dropped before anything is counted (what cuDNN's plans and a CUDA graph want; on
    the CPU the default stays off, so CPU figures are unchanged). ``forward``: what runs the
    model, ``forward(x, y, amp_dtype)`` (default: fastpath.forward of ``model``; the trainer
    passes a graph-captured one, training/cuda_graph.GraphedForward).
    """
    model.eval()
    if forward is None:
        def forward(x, y, dtype):
            return fastpath.forward(model, x, y, dtype)
    totals = class_hits = class_counts = None
    preds, lengths, labels = [], [], []
    shape = min(batch_size, len(eval_set))
    for start in range(0, len(eval_set), batch_size):
        batch = eval_set.batch(start, start + batch_size)
        n = len(batch.y)
        y = task.decoder_labels(batch, training=False)
        pad = fixed_shape if fixed_shape is not None else batch.x.is_cuda
        if pad and n < shape:
            out = _first(forward(_padded(batch.x, shape), _padded(y, shape), amp_dtype), n)
        else:
            out = forward(batch.x, y, amp_dtype)
        loss, margin, recon = task.loss(model, out, batch)[:3]  # a task's extra parts: training's
        hits = task.hits(out, batch).double()           # shaped like batch.y
        if totals is None:
            totals = torch.zeros(4, device=out.lengths.device, dtype=torch.float64)
            class_hits, class_counts = _class_sums(out.lengths.shape[1], hits.device)
        totals += torch.stack([loss.double() * n, margin.double() * n, recon.double() * n,
                               hits.reshape(n, -1).mean(1).sum()])
        _add_class_hits(class_hits, class_counts, batch.y, hits)
        if predictions:
            preds.append(out.lengths.argmax(1))
            lengths.append(out.lengths.float().clone())  # a graph's output is overwritten
            labels.append(batch.y)
    n = len(eval_set)
    if totals is None:
        return {"loss": 0.0, "margin": 0.0, "recon": 0.0, "acc": 0.0, "images": 0,
                "per_class_acc": {}}
    t = (totals / n).tolist()
    result = {"loss": t[0], "margin": t[1], "recon": t[2], "acc": t[3], "images": n,
              "per_class_acc": _per_class(class_hits, class_counts, class_names)}
    if predictions:
        result["predictions"], result["lengths"] = torch.cat(preds), torch.cat(lengths)
        result["labels"] = torch.cat(labels)
    return result


def _padded(t: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """``t`` (n, ...) with zero rows appended up to ``size`` rows (None stays None)."""
    if t is None:
        return None
    return torch.cat([t, t.new_zeros((size - len(t), *t.shape[1:]))])


def _first(out, n: int):
    """A forward result (CapsNetOutput) cut to its first ``n`` images."""
    return out._replace(**{k: v[:n] for k, v in out._asdict().items() if torch.is_tensor(v)})


def _class_sums(num_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (hits, counts) per class, float64."""
    return (torch.zeros(num_classes, device=device, dtype=torch.float64),
            torch.zeros(num_classes, device=device, dtype=torch.float64))


def _add_class_hits(class_hits: torch.Tensor, class_counts: torch.Tensor, labels: torch.Tensor,
                    hits: torch.Tensor) -> None:
    """Add per-label ``hits`` (shaped like ``labels``) to the per-class sums, in place."""
    class_hits.index_add_(0, labels.flatten(), hits.flatten())
    class_counts.index_add_(0, labels.flatten(), torch.ones_like(hits.flatten()))


def _per_class(class_hits: torch.Tensor, class_counts: torch.Tensor, class_names) -> dict:
    """{class name: share of its true labels found} over the classes present."""
    names = list(class_names or [])
    return {(names[c] if c < len(names) else str(c)): h / m
            for c, (h, m) in enumerate(zip(class_hits.tolist(), class_counts.tolist())) if m > 0}


def hit_statistics(task: Task, lengths: torch.Tensor, labels: torch.Tensor,
                   class_names=None) -> tuple[float, dict]:
    """(accuracy, per-class accuracy) of class scores ``lengths`` (N, C) by the task's metric."""
    hits = task.hits(_Scores(lengths), Batch(None, labels)).double()
    class_hits, class_counts = _class_sums(lengths.shape[1], hits.device)
    _add_class_hits(class_hits, class_counts, labels, hits)
    acc = hits.reshape(len(labels), -1).mean(1).mean().item() if len(labels) else 0.0
    return acc, _per_class(class_hits, class_counts, class_names)


class _Scores:
    """A forward result holding only class scores (what the tasks' metrics read)."""

    def __init__(self, lengths: torch.Tensor):
        self.lengths = lengths


# ----------------------------------------------------------------------------- ensembles
def evaluate_ensemble(runs, split: str = "test", checkpoint: str = "best", amp: str = "off",
                      device: str = "auto", overrides: list[str] = ()) -> dict:
    """Evaluate runs as an ensemble on ``split``: the mean of the members' class scores
    (capsule lengths), and the majority vote of their predictions (ties broken by the mean
    score). Members must share dataset, classes and evaluation set (a clear error otherwise).

    Returns {"split", "dataset", "metric", "images", "acc", "vote_acc", "per_class_acc",
    "vote_per_class_acc", "precision", "members": [{"run", "checkpoint", "epoch", "acc"}]}.
    """
    if len(runs) < 2:
        raise EffcnError(f"an ensemble needs at least two runs, got {len(runs)}; pass more run "
                         f"directories.")
    members, first = [], None
    for run in runs:
        e = prepare_run_evaluation(run, checkpoint, split, overrides, device)
        names = e.class_names
        key = {"dataset": e.config.data.dataset, "classes": e.model.config.num_classes,
               "class names": names, "task": e.task.name, "set": e.eval_set.describe()}
        if first is None:
            first = (e, key)
        elif key != first[1]:
            diff = next(k for k in key if key[k] != first[1][k])
            raise EffcnError(f"runs {first[0].run.path} and {e.run.path} cannot form an "
                             f"ensemble: their {diff} differ ({first[1][diff]!r} vs "
                             f"{key[diff]!r}); pass runs of the same dataset and classes.")
        amp_dtype = fastpath.amp_dtype(amp, e.device)
        result = evaluate(e.model, e.task, e.eval_set, e.config.train.eval_batch_size,
                          amp_dtype, class_names=names, predictions=True)
        members.append((e, result))
        del e.model  # keep the scores, not every member's weights
    e0, r0 = members[0]
    labels = r0["labels"]
    for e, r in members[1:]:
        if not torch.equal(r["labels"], labels):
            raise EffcnError(f"run {e.run.path} evaluated other images than {e0.run.path}; pass "
                             f"runs of the same dataset and split settings.")
    scores = torch.stack([r["lengths"] for _, r in members])            # (M, N, C)
    mean = scores.mean(0)
    k = 1 if labels.dim() == 1 else labels.shape[1]                      # labels per item
    votes = torch.zeros_like(mean)
    for s in scores:                                                     # each member's top k
        votes.scatter_add_(1, s.topk(k, dim=1).indices, torch.ones_like(mean[:, :k]))
    names = first[1]["class names"]
    acc, per_class = hit_statistics(e0.task, mean, labels, names)
    vote_acc, vote_per_class = hit_statistics(e0.task, votes + mean / (mean.max() + 1) / 2,
                                              labels, names)
    return {"split": split, "dataset": first[1]["dataset"], "metric": e0.task.metric,
            "images": len(labels), "acc": acc, "vote_acc": vote_acc,
            "per_class_acc": per_class, "vote_per_class_acc": vote_per_class,
            "precision": fastpath.precision_name(fastpath.amp_dtype(amp, e0.device)),
            "members": [{"run": str(e.run.path), "checkpoint": str(e.checkpoint),
                         "epoch": e.state["epoch"], "acc": r["acc"]} for e, r in members]}


# ----------------------------------------------------------------------------- affNIST
def wants_affnist(model) -> bool:
    """True for 40x40 single-channel 10-class models (trained on MNIST-40 or the like)."""
    cfg = model.config
    return (getattr(cfg, "image_size", None) == 40 and getattr(cfg, "in_channels", None) == 1
            and getattr(cfg, "num_classes", None) == 10)


def affnist_test_set(root=None, divisor: float = 255.0) -> ImageSet:
    """The real affNIST test set when its files are found, else the generated affnist_style."""
    from ..data.affnist import AffNIST, AffNISTStyle
    if AffNIST.locate(root, "test") is not None:
        ds, name = AffNIST(root, "test"), "affnist"
    else:
        ds, name = AffNISTStyle(root, "test"), "affnist_style"
    return ImageSet(ds.images.unsqueeze(1), ds.labels.long(), name, divisor=divisor)


def evaluate_affnist(model, task: Task, root, device, batch_size: int = 500,
                     amp_dtype: torch.dtype | None = None, divisor: float = 255.0) -> dict:
    """affNIST (or affNIST-style) test accuracy, overall and per class; "set" names which."""
    s = affnist_test_set(root, divisor)
    s.images, s.labels = s.images.to(device), s.labels.to(device)
    result = evaluate(model, task, s, batch_size, amp_dtype)
    return {"set": s.name, "images": result["images"], "acc": result["acc"],
            "per_class_acc": result["per_class_acc"]}


def side_by_side(columns: list[dict]) -> str:
    """A text table of a report's "side_by_side" columns ({"name", "acc", "images",
    "per_class_acc"}, the first holds the classes): one row per class and 'all'."""
    first, second = columns
    lines = [f"{'class':<7}{first['name']:>14}{second['name']:>16}"]
    for c in first["per_class_acc"]:
        a, b = first["per_class_acc"][c], second["per_class_acc"].get(c, float("nan"))
        lines.append(f"{c:<7}{a:>14.4f}{b:>16.4f}")
    lines.append(f"{'all':<7}{first['acc']:>14.4f}{second['acc']:>16.4f}")
    lines.append(f"{'images':<7}{first['images']:>14}{second['images']:>16}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ a run's checkpoint
@dataclass
class RunEvaluation(OpenedRun):
    """An opened run with its task and the evaluation set of ``split`` (figures reuse it)."""
    task: Task
    eval_set: EvalSet
    split: str


def prepare_run_evaluation(run: str | Path, checkpoint: str = "best", split: str = "test",
                           overrides: list[str] = (), device: str = "auto") -> RunEvaluation:
    """Open a run's checkpoint (best | last | a .pt path) with its config (+ ``overrides``, e.g.
    data.root=...) on ``device``, and load the evaluation set of ``split`` (test | val)."""
    opened = open_run(run, checkpoint, device, overrides)
    task = task_for(opened.config)
    eval_set = task.eval_set(load_eval_split(opened.config, split, opened.device), split)
    return RunEvaluation(**vars(opened), task=task, eval_set=eval_set, split=split)


def evaluate_prepared(e: RunEvaluation, amp: str = "off", affnist: bool = True) -> dict:
    """The report of a prepared evaluation (see ``evaluate_run``)."""
    amp_dtype = fastpath.amp_dtype(amp, e.device)
    result = evaluate(e.model, e.task, e.eval_set, e.config.train.eval_batch_size, amp_dtype,
                      class_names=e.class_names)
    report = {"checkpoint": str(e.checkpoint), "epoch": e.state["epoch"], "split": e.split,
              "dataset": e.config.data.dataset, "task": e.task.name, "metric": e.task.metric,
              "precision": fastpath.precision_name(amp_dtype), **e.eval_set.describe(), **result}
    if e.note:  # a checkpoint from elsewhere, evaluated with the run's config
        report["checkpoint_note"] = e.note
    if e.config.data.protocol == "authors":  # the checkpoint was chosen on the test split
        report["selection"] = TEST_SELECTED
    if e.split == "test" and affnist and wants_affnist(e.model):
        aff = evaluate_affnist(e.model, e.task, e.config.data.root, e.device,
                               e.config.train.eval_batch_size, amp_dtype,
                               e.config.data.pixel_divisor)
        # the flat keys are the report's documented fields (effcn compare reads affnist_acc)
        report.update({"affnist_acc": aff["acc"], "affnist_set": aff["set"],
                       "affnist_images": aff["images"],
                       "affnist_per_class_acc": aff["per_class_acc"]})
        base = "MNIST-40" if report["dataset"] == "mnist40" else report["dataset"]
        report["side_by_side"] = [
            _column(f"{base} test", report),
            _column("affNIST test" if aff["set"] == "affnist" else "affNIST-style", aff)]
    report["evaluated_on"] = e.task.describe_eval_set(e.eval_set)
    return report


def _column(name: str, result: dict) -> dict:
    """One test set's column of a side-by-side comparison."""
    return {"name": name, "acc": result["acc"], "images": result["images"],
            "per_class_acc": result["per_class_acc"]}


def write_eval_figures(e: RunEvaluation, say=print) -> list[Path]:
    """The task's figures of an evaluation (MultiMNIST: the overlap figure) in RUN/figures; a
    figure that cannot be drawn (e.g. matplotlib missing) is skipped with a message (``say``)."""
    try:
        return e.task.eval_figures(e.model, e.eval_set, e.run.figures)
    except EffcnError as error:
        say(f"no figure: {error}")
        return []


def evaluate_run(run: str | Path, checkpoint: str = "best", split: str = "test",
                 amp: str = "off", affnist: bool = True, overrides: list[str] = (),
                 device: str = "auto", write: bool = True) -> dict:
    """Evaluate a run's checkpoint on ``split`` and return the report.

    The report: checkpoint (the file evaluated; checkpoint_note when it is not the run's own
    but a compatible one from elsewhere, evaluated with the run's config), epoch, split,
    dataset, task, metric, precision, images (and how MultiMNIST pairs were drawn), loss,
    margin, recon, acc, per_class_acc, and for 40x40 MNIST models on the test split the
    affNIST side (affnist_acc, affnist_set, ..., and side_by_side:
    the two test sets as columns {"name", "acc", "images", "per_class_acc"}); evaluated_on: the
    task's words for the set (Task.describe_eval_set). ``amp``: off (fp32, the default, as the
    summary's test), bf16 or auto. With ``write``, the report is saved as
    RUN/eval/<split>_<checkpoint>.json ("report_path"); summary.json is never touched. The
    task's figures (Task.eval_figures) are ``write_eval_figures``'s, as ``effcn eval`` draws."""
    prepared = prepare_run_evaluation(run, checkpoint, split, overrides, device)
    report = evaluate_prepared(prepared, amp, affnist)
    if write:
        report["report_path"] = str(save_report(prepared, report))
    return report


def save_report(e: RunEvaluation, report: dict) -> Path:
    """Write ``report`` as RUN/eval/<split>_<checkpoint>.json (atomically); returns the path.
    A checkpoint from elsewhere is <split>_<its run>-<checkpoint>.json: never the run's own."""
    path = e.run.eval_report_path(e.split, e.checkpoint if e.note is None else
                                  f"{RunDir.of_checkpoint(e.checkpoint).name}-{e.checkpoint.name}")
    write_json(path, report)
    return path
