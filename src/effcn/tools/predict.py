"""``effcn predict RUN IMAGE ...``: classify images with a trained run, as a library.

    result = effcn.predict("runs/mnist/...", ["digit.png", "photo.jpg"])
    result = effcn.predict(run, images_uint8)            # (N, C, H, W) or (N, H, W) tensor
    for p in result.predictions: p.class_index, p.class_name, p.scores

Image files may be any size, colour or greyscale, light or dark background: they are made into
what the model takes by ``preprocess`` (data.user_images). A tensor batch must already have the
model's (C, H, W): uint8 pixels (0-255) or floats in [0, 1]. Either way the images are then
scaled as the run's data were (pixels / data.pixel_divisor; the authors' MNIST: x / 256).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.image_files import MAX_PIXELS
from ..errors import EffcnError
from ..training.runs import OpenedRun, open_run

# Runs on these datasets get MNIST-style preprocessing from ``preprocess="auto"``.
DIGIT_DATASETS = ("mnist", "idx", "mnist40", "affnist")
PREPROCESS = ("auto", "mnist", "resize", "none")


@dataclass
class Prediction:
    """One image's prediction: the class with the highest score, and every class's score."""
    image: str                  # the file, or "batch[i]" for a tensor's i-th image
    class_index: int
    class_name: str
    scores: list[float]         # per class: capsule length (capsule models) or score (CNN)


@dataclass
class PredictResult:
    predictions: list[Prediction]
    class_names: list[str]
    score_name: str             # "length" (capsule models) | "score" (the CNN baseline)
    preprocess: str             # what was applied: mnist | resize | none
    checkpoint: Path
    epoch: int

    def to_dict(self) -> dict:
        return {**asdict(self), "checkpoint": str(self.checkpoint)}


def predict(run: str | Path | OpenedRun, images, checkpoint: str = "best",
            preprocess: str = "auto", invert: bool | None = None,
            device: str = "cpu", max_pixels: int = MAX_PIXELS) -> PredictResult:
    """Classify ``images`` (a list of image file paths, or a tensor batch) with a run's
    ``checkpoint`` (best | last | a .pt path; or an already opened run).

    ``preprocess`` (files only; a tensor is taken as it is): mnist (detect polarity, crop to
    the ink, fit into 20x20, centre by mass in 28x28, as MNIST was made), resize, none (the file
    must be the model's size), auto (mnist for single-channel runs on digits, else resize).
    ``invert``: dark ink on a light background (None: detected by mnist, else not inverted).
    ``max_pixels``: larger image files are refused from their header, before decoding.
    """
    opened = run if isinstance(run, OpenedRun) else open_run(run, checkpoint, device)
    model, config = opened.model, opened.config
    _check_run(opened)
    if isinstance(images, torch.Tensor):
        batch, names, preprocess = _tensor_batch(opened, images, preprocess, invert)
    else:
        preprocess = _preprocessing(opened, preprocess)
        batch = _file_batch(opened, images, preprocess, invert, max_pixels)
        names = [str(p) for p in images]
    # as the run's data were scaled (the authors' MNIST: x / 256, so 255 -> 0.996)
    batch = batch.to(opened.device) * (255.0 / config.data.pixel_divisor)
    with torch.no_grad():
        lengths = model(batch).lengths.float().cpu()
    predictions = [Prediction(name, int(row.argmax()), opened.class_names[int(row.argmax())],
                              row.tolist()) for name, row in zip(names, lengths)]
    # capsule models score classes by capsule length; the baseline CNN by probability/score
    score_name = "length" if getattr(model, "has_capsules", True) else "score"
    return PredictResult(predictions, opened.class_names, score_name, preprocess,
                         opened.checkpoint, opened.state["epoch"])


def _check_run(opened: OpenedRun) -> None:
    """Refuse runs whose data go through an evaluation preprocessing predict does not apply."""
    from ..data.transforms import build_augment
    from ..training.tasks.classification import eval_transform_of
    augment = opened.config.data.augment
    if eval_transform_of(build_augment(augment)) is not None:
        raise EffcnError(f"predict takes images as the model sees them, but this run's data go "
                         f"through the {augment!r} evaluation preprocessing first; use "
                         f"effcn eval on the dataset instead.")


def _preprocessing(opened: OpenedRun, preprocess: str) -> str:
    """The preprocessing of image files: ``preprocess``, with auto decided by the run."""
    if preprocess not in PREPROCESS:
        raise EffcnError(f"unknown preprocessing {preprocess!r}; choose one of "
                         f"{', '.join(PREPROCESS)}.")
    cfg = opened.model.config
    if preprocess != "auto":
        return preprocess
    return ("mnist" if opened.config.data.dataset in DIGIT_DATASETS and cfg.in_channels == 1
            and cfg.image_size >= 28 else "resize")


def _file_batch(opened: OpenedRun, paths, preprocess: str, invert,
                max_pixels: int) -> torch.Tensor:
    """Image files -> float (N, C, S, S) in [0, 1]; the model must take square images."""
    from ..data.user_images import load_image
    from ..models import input_shape
    channels, height, width = input_shape(opened.model.config)
    if height != width:
        raise EffcnError(f"predict takes square images, but model {opened.state['model_name']} "
                         f"takes {height}x{width} images; use effcn eval on its dataset instead.")
    return torch.stack([load_image(p, height, channels, invert=invert, preprocess=preprocess,
                                    max_pixels=max_pixels)
                        for p in paths])


def _tensor_batch(opened: OpenedRun, images: torch.Tensor, preprocess: str, invert):
    """A uint8 (0-255) or float ([0, 1]) batch (N, C, H, W), or (N, H, W) for one channel ->
    (float batch in [0, 1], names, "none")."""
    from ..models import input_shape
    if preprocess not in ("auto", "none"):
        raise EffcnError(f"a tensor batch is taken as it is, but preprocess={preprocess!r} was "
                         f"asked; pass image files to preprocess them, or preprocess='none'.")
    shape = input_shape(opened.model.config)
    x = images.unsqueeze(1) if images.dim() == 3 else images
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise EffcnError(f"the image batch has shape {tuple(images.shape)} but model "
                         f"{opened.state['model_name']} takes (N, {', '.join(map(str, shape))}); "
                         f"resize the images first or pass image files.")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if invert:
        x = 1.0 - x
    return x, [f"batch[{i}]" for i in range(len(x))], "none"
