"""``effcn visualize RUN``: every figure of a run, written into RUN/figures.

Kinds (``--what``): recon, gif, routing, perturb, filters, curves. Figures are made from the best
checkpoint, or with ``epoch=N`` from checkpoints/epoch_NNN.pt (run.checkpoint_every) or from
best/last when they hold epoch N. Images come from the validation split: the run's 32 fixed
reconstruction images (RUN/recon/fixed_images.npz, or chosen now by the same rule when the run
saved none) and the first ``n_images`` validation images for routing statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..analysis.probe import has_capsules, model_label
from ..errors import EffcnError
from ..training.rundir import RunDir

KINDS = ("recon", "gif", "routing", "perturb", "filters", "curves")
CAPSULE_KINDS = ("recon", "routing", "perturb")


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise EffcnError(f"--what {text!r}: unknown figure kind(s) {', '.join(unknown) or '(none)'};"
                         f" choose from {','.join(KINDS)}.")
    return kinds


def checkpoint_for_epoch(run: RunDir, epoch: int | None) -> Path:
    """The checkpoint to draw from: best.pt, or the one holding ``epoch``."""
    from ..training.checkpoint import load_checkpoint
    if epoch is None:
        return run.checkpoint("best")
    path = run.epoch_checkpoint(epoch)
    if path.is_file():
        return path
    for p in (run.best, run.last):
        if p.is_file() and load_checkpoint(p).get("epoch") == epoch:
            return p
    saved = [e for e, _ in run.epoch_checkpoints()]
    raise EffcnError(f"{run.path} has no checkpoint of epoch {epoch} (epoch checkpoints: "
                     f"{saved or 'none'}; best/last hold other epochs); pick one of those, or "
                     f"train with --set run.checkpoint_every=1 to keep every epoch.")


class RunData:
    """The validation split of a run, loaded on first use."""

    def __init__(self, config, device):
        self.config, self.device = config, device
        self._val = None

    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            from ..training.splits import load_eval_split
            from ..training.tasks import task_for
            val = load_eval_split(self.config, "val", "cpu")
            self._val = task_for(self.config).figure_images(val)
        return self._val


def fixed_images(run: RunDir, data: RunData) -> tuple[torch.Tensor, torch.Tensor]:
    from ..analysis import reconstructions as R
    path = run.fixed_images
    if path.is_file():
        return R.load_fixed_images(path)
    images, labels = data.val()
    pos = R.choose_fixed_images(labels, data.config.train.seed)
    return images[pos], labels[pos]


def distinct_class_examples(labels: torch.Tensor, n: int) -> list[int]:
    """Positions of the first example of up to n different classes, spread over the classes."""
    seen, picks = set(), []
    classes = sorted(set(labels.tolist()))
    wanted = [classes[round(i * (len(classes) - 1) / max(n - 1, 1))] for i in range(n)] \
        if len(classes) >= n else classes
    for k in wanted:
        if k in seen:
            continue
        seen.add(k)
        picks.append(int((labels == k).nonzero()[0]))
    return picks


def visualize_run(run: str | Path, kinds=KINDS, epoch: int | None = None, n_images: int = 2000,
                  n_examples: int = 3, out_dir: str | Path | None = None,
                  say=print) -> list[Path]:
    """Write the figures of ``kinds`` for a run; returns their paths. Capsule figures of a
    model without capsules are skipped with a message (``say``)."""
    from ..training.checkpoint import model_from_checkpoint
    from ..training.config_io import config_from_dict
    from ..training.environment import resolve_device
    from ..analysis.imageio import pyplot, save_figure, save_png
    if set(kinds) - {"recon", "gif"}:
        pyplot()  # fail early without matplotlib (recon and gif need only Pillow)
    run = RunDir.open(run)
    out = Path(out_dir) if out_dir else run.figures
    suffix = f"_epoch{epoch:03d}" if epoch is not None else ""
    written: list[Path] = []
    needs_model = [k for k in kinds if k not in ("gif", "curves")]
    model = state = config = data = None
    if needs_model:
        device = resolve_device("auto")
        ckpt = checkpoint_for_epoch(run, epoch)
        model, state = model_from_checkpoint(ckpt, map_location=device)
        model.to(device).eval()
        config = config_from_dict(state["config"])
        data = RunData(config, device)
        say(f"figures from {ckpt} (epoch {state.get('epoch')})")
    names = (state or {}).get("class_names") or \
        [str(i) for i in range(getattr(getattr(model, "config", None), "num_classes", 10))]

    for kind in kinds:
        if kind in CAPSULE_KINDS and not has_capsules(model):
            say(f"skipped {kind}: model {model_label(model)} has no capsules.")
            continue
        if kind == "recon":
            from ..analysis.probe import require_decoder
            from ..analysis.reconstructions import reconstruction_grid
            require_decoder(model)
            images, _ = fixed_images(run, data)
            written.append(save_png(reconstruction_grid(model, images),
                                    out / f"reconstructions{suffix}.png"))
        elif kind == "gif":
            from ..analysis.reconstructions import assemble_gif, saved_grids
            if not saved_grids(run.recon):
                say("skipped gif: the run saved no reconstruction grids (train with "
                    "--set run.recon_every=1).")
                continue
            written.append(assemble_gif(run.recon, out / "reconstructions.gif"))
        elif kind == "routing":
            written += _routing(model, run, data, names, n_images, out, suffix, epoch, say)
        elif kind == "perturb":
            from ..analysis.perturbation import perturb_capsule, plot_perturbation
            images, labels = fixed_images(run, data)
            for pos in distinct_class_examples(labels, n_examples):
                result = perturb_capsule(model, images[pos])
                name = names[result["class"]]
                written.append(save_figure(
                    plot_perturbation(result, images[pos], name),
                    out / f"perturbation{suffix}_{pos:02d}_class{name}.png"))
        elif kind == "filters":
            from ..analysis.filters import (feature_maps, first_layer_filters, plot_feature_maps,
                                  plot_filters)
            images, _ = fixed_images(run, data)
            written.append(save_figure(plot_filters(first_layer_filters(model)),
                                       out / f"filters{suffix}.png"))
            written.append(save_figure(plot_feature_maps(images[0], feature_maps(model, images[0])),
                                       out / f"feature_maps{suffix}.png"))
        elif kind == "curves":
            from ..analysis.curves import load_curves, plot_training_curves
            curves = load_curves(run.metrics_path)
            written.append(save_figure(plot_training_curves(curves, f"training curves: "
                                                            f"{run.name}"),
                                       out / "curves.png"))
    return written


def _routing(model, run, data, names, n_images, out, suffix, epoch, say) -> list[Path]:
    from ..analysis import routing as RT
    from ..analysis.imageio import save_figure
    from ..io import atomic_write_text
    from ..training.checkpoint import model_from_checkpoint
    images, labels = data.val()
    images, labels = images[:n_images], labels[:n_images]
    n_cls = model.config.num_classes
    scores = RT.routing_scores(model, images)
    per_class = RT.coupling_per_class(scores["coupling"], labels, n_cls)
    summary = RT.routing_entropy(scores["coupling"], scores["predictions"])
    summary["split"] = f"validation (first {len(labels)} images)"
    summary["bias_abs_mean"] = float(model.digit_caps.b.detach().abs().mean()) \
        if hasattr(getattr(model, "digit_caps", None), "b") else None
    written = [save_figure(RT.plot_class_coupling(per_class, names),
                           out / f"routing_per_class{suffix}.png")]
    fixed, fixed_labels = fixed_images(run, data)
    picks = distinct_class_examples(fixed_labels, 5)
    ex = RT.routing_scores(model, fixed[picks])
    written.append(save_figure(RT.plot_example_coupling(fixed[picks], ex["coupling"],
                                                        fixed_labels[picks], ex["predictions"],
                                                        names),
                               out / f"routing_examples{suffix}.png"))
    history = []
    for e, path in run.epoch_checkpoints():
        if epoch is not None and e > epoch:
            continue
        m, _ = model_from_checkpoint(path, map_location=next(model.parameters()).device)
        s = RT.routing_scores(m, images)
        history.append((e, RT.coupling_to_true_class(RT.coupling_per_class(s["coupling"], labels,
                                                                            n_cls)),
                        RT.routing_entropy(s["coupling"])["entropy_ratio_mean"]))
    if history:
        written.append(save_figure(RT.plot_coupling_over_epochs(
            [h[0] for h in history], [h[1] for h in history], [h[2] for h in history], names),
            out / "routing_epochs.png"))
        summary["entropy_ratio_by_epoch"] = {str(h[0]): h[2] for h in history}
    else:
        say("routing across epochs: no checkpoints/epoch_NNN.pt (train with "
            "--set run.checkpoint_every=1).")
    path = out / f"routing_summary{suffix}.json"
    atomic_write_text(path, json.dumps(summary, indent=2))
    written.append(path)
    say(RT.describe_entropy(summary))
    return written
