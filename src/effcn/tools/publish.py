"""``effcn publish RUN --out DIR``: a run's weights as a Hugging Face Hub folder with a model card.

DIR gets ``model.safetensors`` (the weights the run is evaluated with: the EMA where it kept one),
``config.json`` (models.pretrained: the model, class names, input size, pixel divisor, the
evaluation preprocessing, and the run's config without data.root, which rebuilds its test set)
and ``README.md``: a model card with the Hub's YAML front matter, what the run was trained on,
its command and seed, its test figure as summary.json has it, how to reproduce that figure
(``effcn eval DIR``) and the data's licence. ``effcn eval DIR`` / ``effcn predict DIR img.png``
open the folder as they open a run (training.runs.open_run).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..io import atomic_write_text, read_json
from ..models import count_parameters
from ..models.pretrained import CONFIG_NAME, WEIGHTS_NAME, check_output_folder, save_pretrained
from ..training.runs import OpenedRun, open_run

# dataset -> (name on the card, licence on the card, the Hub's dataset id or "")
DATASETS = {
    "mnist": ("MNIST", "unknown: check (no licence is stated by its authors)", "ylecun/mnist"),
    "fashion_mnist": ("Fashion-MNIST", "MIT", "zalando-datasets/fashion_mnist"),
    "cifar10": ("CIFAR-10", "unknown: check", "uoft-cs/cifar10"),
    "smallnorb": ("smallNORB", "unknown: check", ""),
    "affnist": ("affNIST (derived from MNIST)", "unknown: check", ""),
    "affnist_style": ("affNIST-style (generated from MNIST by effcn)", "as MNIST: unknown: check",
                      ""),
    "mnist40": ("MNIST-40 (MNIST on a 40x40 canvas)", "as MNIST: unknown: check", "ylecun/mnist"),
    "multimnist": ("MultiMNIST (pairs of MNIST digits)", "as MNIST: unknown: check",
                   "ylecun/mnist"),
    "mnist_numbers": ("MNIST numbers (MNIST digits side by side)", "as MNIST: unknown: check",
                      "ylecun/mnist"),
    "idx": ("your own images in MNIST's IDX layout", "yours: state it", ""),
    "folder": ("your own image files (a folder of class sub-folders)", "yours: state it", ""),
    "arrays": ("your own images in a NumPy file", "yours: state it", ""),
}


@dataclass
class Published:
    folder: Path
    files: list[Path]
    test_acc: float | None      # the card's test figure (None: the run has none)


def publish_run(run: str | Path, out: str | Path, force: bool = False,
                license: str = "other") -> Published:
    """Write RUN's evaluated weights (best.pt) as a pretrained folder OUT with a model card;
    a non-empty OUT is refused unless ``force``. ``license``: the card's licence id (the
    weights'; the data's licences are listed in the card)."""
    out = Path(out)
    check_output_folder(out, force)  # before anything is opened or written
    opened = open_run(run, "best", "cpu")
    config, summary = opened.config, opened.run.summary()
    figure = test_figure(opened, summary)
    weights = summary.get("weights", "EMA" if opened.state.get("ema") is not None else "raw")
    run_config = config.to_dict()
    run_config.pop("run", None)              # where the run was written: this machine's business
    run_config["data"]["root"] = None        # found on the reader's machine (or --set data.root)
    save_pretrained(opened.model, out, opened.class_names, config.data.pixel_divisor, extra={
        "dataset": config.data.dataset, "epoch": opened.state["epoch"],
        "weights": weights,
        "eval_transform": eval_transform_name(config.data.augment),
        "test": figure, "run_config": run_config,
        **({"imported_from": opened.state["imported_from"]}
           if opened.state.get("imported_from") else {})}, force=force)
    atomic_write_text(out / "README.md", model_card(opened, weights, figure, license))
    return Published(out, [out / WEIGHTS_NAME, out / CONFIG_NAME, out / "README.md"],
                     figure["acc"] if figure else None)


def eval_transform_name(augment: str) -> str | None:
    """The augmentation whose evaluation preprocessing the data go through, or None."""
    from ..data.transforms import build_augment
    from ..training.tasks.classification import eval_transform_of
    return augment if eval_transform_of(build_augment(augment)) is not None else None


def test_figure(opened: OpenedRun, s: dict) -> dict | None:
    """The run's test figure: summary.json's (``s``), else `effcn eval`'s report on best.pt (an
    imported run), else None. {"acc", "metric", "images", "precision", "source", "selection"}."""
    if "test_acc" in s:
        return {"acc": s["test_acc"], "metric": s.get("test_metric", "accuracy"),
                "images": s.get("test_images"), "precision": s.get("test_precision", "fp32"),
                "source": "summary.json", "selection": s.get("selection", "validation split")}
    report = opened.run.eval_reports().get("test_best")
    if report:
        return {"acc": report["acc"], "metric": report["metric"], "images": report["images"],
                "precision": report["precision"], "source": "effcn eval (eval/test_best.json)",
                "selection": report.get("selection", "validation split")}
    return None


def model_card(opened: OpenedRun, weights: str, figure: dict | None, license: str) -> str:
    """README.md: the Hub's YAML front matter, then what the weights are (``weights``: EMA or
    raw, as config.json says) and how to check them."""
    config, run = opened.config, opened.run
    dataset = config.data.dataset
    name, data_licence, hub_id = DATASETS.get(dataset, (dataset, "unknown: check", ""))
    env = read_json(run.env_path) if run.env_path.is_file() else {}
    front = ["---", "library_name: effcn", "pipeline_tag: image-classification",
             f"license: {license}",
             "tags:", "- capsule-networks", "- efficient-capsnet", "- image-classification",
             f"- {opened.state['model_name']}"]
    front += ["datasets:", f"- {hub_id}"] if hub_id else []
    front += ["metrics:", "- accuracy", "---", ""]
    argv, imported = env.get("argv") or [], opened.state.get("imported_from")
    cmd = ("effcn " + " ".join(shlex.quote(a) for a in argv[1:]) if argv[1:2] == ["train"]
           else "not the effcn command (the Python API); config.json's run_config is its config")
    seed = f"{config.train.seed} (split seed {config.data.split_seed})"
    origin = f"Trained with effcn {env.get('effcn', '')}".rstrip()
    if imported:
        cmd, seed = f"effcn import-keras {imported}", "not recorded (trained by the authors)"
        origin = "The authors' trained Keras weights, imported with effcn import-keras"
    body = [f"# {opened.state['model_name']} on {name}", "",
            f"{origin}; published with effcn {__version__}.", "",
            "| | |", "|---|---|",
            f"| model | `{opened.state['model_name']}` ({count_parameters(opened.model):,} "
            f"parameters) |",
            f"| trained on | {name} (`data.dataset: {dataset}`, augmentation "
            f"`{config.data.augment}`, protocol `{config.data.protocol}`) |",
            f"| classes | {len(opened.class_names)}: {', '.join(opened.class_names[:20])}"
            f"{' ...' if len(opened.class_names) > 20 else ''} |",
            f"| input | {_input_line(opened)} |",
            f"| weights | {weights}, epoch {opened.state['epoch']} |",
            f"| command | `{cmd}` |",
            f"| seed | {seed} |",
            f"| git revision | {env.get('git_revision', 'not recorded')}"
            f"{' (with uncommitted changes)' if env.get('git_dirty') else ''} |", "",
            "## Test figure", ""]
    if figure:
        body += [f"{figure['metric']} **{figure['acc']:.4f}** on the {figure['images']} test "
                 f"images of {name} ({figure['precision']}; from {figure['source']}; checkpoint chosen "
                 f"on the {figure['selection']}).", ""]
    else:
        body += ["Not measured: this run has no test figure (no summary.json, no effcn eval "
                 "report); measure it with the command below.", ""]
    body += [f"{'Reproduce' if figure else 'Measure'} it (the test set is rebuilt from "
             "config.json; point `data.root` at the dataset's files):", "", "```",
             "pip install 'effcn[hub]'",
             f"effcn eval THIS_FOLDER --set data.root=/path/to/{dataset}", "```", "",
             "Use the weights:", "", "```python", "import effcn",
             "model = effcn.from_pretrained(\"THIS_FOLDER_OR_HUB_ID\")",
             "lengths = model(images).lengths   # images: float (N, C, H, W), "
             "pixels / pixel_divisor", "```", "",
             "or `torch.hub.load(EFFCN_REPO, \"efficient_capsnet\", source=\"local\", "
             "pretrained=\"THIS_FOLDER\")`, or `effcn predict THIS_FOLDER image.png`.", "",
             "## Data licence", "", "| dataset | licence |", "|---|---|",
             f"| {name} | {data_licence} |", "",
             "The weights are derived from these data: check the data's terms before you use "
             "them.", ""]
    return "\n".join(front + body)


def _input_line(opened: OpenedRun) -> str:
    from ..models import input_shape
    c, h, w = input_shape(opened.model.config)
    transform = eval_transform_name(opened.config.data.augment)
    return (f"float (N, {c}, {h}, {w}) = uint8 pixels / {opened.config.data.pixel_divisor:g}"
            + (f", then the `{transform}` evaluation preprocessing" if transform else ""))
