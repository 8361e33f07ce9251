"""effcn.predict as a library (paths or a tensor batch in, a PredictResult out) and open_run."""

from __future__ import annotations

import pytest
import torch

import effcn
from effcn.data.idx import read_idx
from effcn.errors import EffcnError
from effcn.tools.predict import PredictResult

Image = pytest.importorskip("PIL.Image")


def _test_digits(root, n: int) -> torch.Tensor:
    return torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte.gz")[:n].copy())


def test_open_run_gives_model_config_and_class_names(tiny_run):
    opened = effcn.open_run(tiny_run.path, "last", device="cpu")
    assert opened.checkpoint == tiny_run.path / "checkpoints" / "last.pt"
    assert opened.run.path == tiny_run.path and opened.device == torch.device("cpu")
    assert opened.config.data.dataset == tiny_run.config.data.dataset
    assert opened.class_names == [str(i) for i in range(opened.model.config.num_classes)]
    assert not opened.model.training and opened.state["epoch"] == 2
    # a checkpoint file opens the same run
    assert effcn.open_run(opened.checkpoint).run.path == tiny_run.path


def test_predict_a_tensor_batch_is_the_model_on_scaled_pixels(tiny_run):
    digits = _test_digits(tiny_run.data_root, 5)                      # (5, 28, 28) uint8
    result = effcn.predict(tiny_run.path, digits)
    assert isinstance(result, PredictResult) and result.preprocess == "none"
    opened = effcn.open_run(tiny_run.path, device="cpu")
    with torch.no_grad():
        expected = opened.model(digits.unsqueeze(1).float()
                                / opened.config.data.pixel_divisor).lengths
    scores = torch.tensor([p.scores for p in result.predictions])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert [p.class_index for p in result.predictions] == expected.argmax(1).tolist()
    assert all(p.class_name == result.class_names[p.class_index] for p in result.predictions)
    assert [p.image for p in result.predictions] == [f"batch[{i}]" for i in range(5)]
    assert result.score_name == "length" and result.epoch == tiny_run.summary["best_epoch"]
    # an opened run predicts without opening it again
    again = effcn.predict(opened, digits)
    assert [p.scores for p in again.predictions] == [p.scores for p in result.predictions]
    # floats in [0, 1] are the same images as uint8 pixels; (N, 1, H, W) as (N, H, W)
    floats = effcn.predict(tiny_run.path, digits.unsqueeze(1).float() / 255.0)
    torch.testing.assert_close(torch.tensor([p.scores for p in floats.predictions]), scores)


def test_predict_files_equal_the_same_pixels_as_a_tensor(tiny_run, tmp_path):
    digits = _test_digits(tiny_run.data_root, 3)
    paths = []
    for i, d in enumerate(digits):
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray(d.numpy()).save(paths[-1])
    from_files = effcn.predict(tiny_run.path, paths, preprocess="none")
    from_tensor = effcn.predict(tiny_run.path, digits)
    assert [p.image for p in from_files.predictions] == [str(p) for p in paths]
    torch.testing.assert_close(torch.tensor([p.scores for p in from_files.predictions]),
                               torch.tensor([p.scores for p in from_tensor.predictions]))
    # auto: a single-channel run on digits gets MNIST-style preprocessing
    assert effcn.predict(tiny_run.path, paths).preprocess == "mnist"


def test_predict_refuses_a_batch_of_another_shape_in_one_sentence(tiny_run):
    with pytest.raises(EffcnError, match=r"has shape \(2, 32, 32\) but model"):
        effcn.predict(tiny_run.path, torch.zeros(2, 32, 32, dtype=torch.uint8))
    with pytest.raises(EffcnError, match="a tensor batch is taken as it is"):
        effcn.predict(tiny_run.path, torch.zeros(2, 28, 28), preprocess="mnist")
