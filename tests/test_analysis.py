"""Seeing inside: run statistics, reconstruction grids + GIF, TensorBoard, routing, perturbation,
filters, curves, `effcn visualize` and `effcn runs` (on the shared tiny run, conftest.py's tiny_run)."""

import json

import numpy as np
import pytest
import torch

from effcn.analysis import reconstructions as R
from effcn.analysis import routing as RT
from effcn.analysis.filters import feature_maps, first_layer_filters
from effcn.analysis.perturbation import dimension_effect, perturb_capsule, perturbation_grid
from effcn.analysis.probe import require_capsules
from effcn.tools.visualize import visualize_run
from effcn.capsules import squash
from effcn.cli import main
from effcn.errors import ConfigError, EffcnError
from effcn.models import create_model
from effcn.training.checkpoint import model_from_checkpoint
from effcn.training.config_io import load_config
from effcn.training.splits import as_nchw, load_dataset, train_val_split
from effcn.training.trainer import Trainer

from helpers import quick_overrides

EPOCHS = 2  # of the shared tiny_run (conftest.py), which has every artefact switched on


def test_summary_has_run_statistics(tiny_run):
    run_dir, summary = tiny_run.path, tiny_run.summary
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary
    for key in ("test_acc", "best_epoch", "best_val_acc", "parameters", "train_seconds"):
        assert key in saved
    assert saved["wall_seconds"] >= saved["train_seconds"] > 0
    assert saved["resumed"] is False and saved["started"] <= saved["finished"]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_records = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epoch_records] == [1, 2]
    for key in ("train_margin", "train_recon", "val_acc", "lr", "train_images_per_s"):
        assert all(isinstance(r[key], float) for r in epoch_records)
    batch_records = [r for r in epochs if r["kind"] == "batch"]
    for key in ("loss", "margin", "recon", "acc", "lr", "images_per_s"):
        assert batch_records and all(isinstance(r[key], float) for r in batch_records)
    assert all(r["images_per_s"] > 0 for r in batch_records)


def test_reconstruction_grid_holds_the_32_fixed_validation_images(tiny_run):
    run_dir, config = tiny_run.path, tiny_run.config
    images, labels = R.load_fixed_images(run_dir / "recon" / "fixed_images.npz")
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8
    # drawn from the validation split (not test): they are the val images at the saved positions
    with np.load(run_dir / "recon" / "fixed_images.npz") as data:
        pos = torch.from_numpy(data["val_positions"])
    train = load_dataset(config, "train")
    _, val_idx = train_val_split(len(train.labels), config.data.val_size, config.data.split_seed)
    assert torch.equal(as_nchw(train.images)[val_idx][pos], images)
    assert torch.equal(train.labels.long()[val_idx][pos], labels.long())
    assert (labels[1:] >= labels[:-1]).all()  # ordered by label

    grids = R.saved_grids(run_dir / "recon")
    assert [e for e, _ in grids] == [1, 2]
    from effcn.analysis.imageio import read_png
    first, last = read_png(grids[0][1]), read_png(grids[-1][1])
    cell = 28 * R.SCALE + R.PAD
    assert first.shape == (8 * cell + R.PAD, 8 * cell + R.PAD)  # 4 x (originals, recons) x 8
    model, _ = model_from_checkpoint(run_dir / "checkpoints" / "epoch_002.pt")
    recon = R.to_uint8(R.reconstruct(model, images))
    for k in range(32):
        row, col = 2 * (k // 8), k % 8
        # same originals every epoch, and the pair below is this epoch's reconstruction
        assert np.array_equal(R.cell(first, row, col, 28), images[k, 0].numpy())
        assert np.array_equal(R.cell(last, row, col, 28), images[k, 0].numpy())
        assert np.abs(R.cell(last, row + 1, col, 28).astype(int) - recon[k]).max() <= 1
    assert not np.array_equal(first, last)  # the reconstructions changed with training


def test_gif_has_one_frame_per_saved_epoch(tiny_run):
    from PIL import Image
    run_dir = tiny_run.path
    with Image.open(run_dir / "recon" / "reconstructions.gif") as gif:
        assert gif.n_frames == len(R.saved_grids(run_dir / "recon")) == EPOCHS
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("L")))
    grid = R.saved_grids(run_dir / "recon")[-1][1]
    from effcn.analysis.imageio import read_png
    # last frame = caption strip + the last epoch's grid
    assert np.array_equal(frames[-1][-read_png(grid).shape[0]:], read_png(grid))


def test_tensorboard_events_hold_the_expected_tags(tiny_run):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (effcn[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tiny_run.path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("batch/loss", "batch/margin", "batch/recon", "batch/acc", "batch/lr",
                "epoch/train_loss", "epoch/val_acc", "epoch/lr", "epoch/train_images_per_s",
                "hparam/test_acc"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2]
    assert acc.Scalars("hparam/test_acc")[0].value == pytest.approx(tiny_run.summary["test_acc"])
    assert "reconstructions" in tags["images"]
    assert any(t.startswith("weights/") for t in tags["histograms"])


def test_coupling_returned_is_the_coupling_used_in_forward():
    torch.manual_seed(0)
    # he_normal primary capsules: long enough at init for the coupling to be far from uniform
    # (with the authors' glorot_uniform init, c is uniform to 1e-4 before training)
    model = create_model("efficient_capsnet_tiny", primary_init="he_normal").eval()
    with torch.no_grad():
        model.digit_caps.b.normal_(0, 0.1)  # a non-zero bias, so c and c + b differ
        x = torch.rand(5, 1, 28, 28)
        out = model(x, return_routing=True)
        c = out.routing
        assert torch.allclose(c.sum(dim=1), torch.ones(5, c.shape[2]), atol=1e-5)
        u_hat = model.digit_caps.predictions(model.primary(model.stem(x)))
        v = squash(((c + model.digit_caps.b).unsqueeze(-1) * u_hat).sum(dim=2))
        assert torch.allclose(v, out.capsules, atol=1e-6)
        other = torch.full_like(c, 1 / c.shape[1])  # a different c gives other capsules
        v_other = squash(((other + model.digit_caps.b).unsqueeze(-1) * u_hat).sum(dim=2))
        assert not torch.allclose(v_other, out.capsules, atol=1e-4)
        # batched extraction returns the same coefficients
        scores = RT.routing_scores(model, x, batch_size=2)
        assert torch.allclose(scores["coupling"], c, atol=1e-6)
        assert torch.equal(scores["predictions"], out.lengths.argmax(1))


def test_routing_statistics():
    n, n_out, n_in = 6, 10, 16
    uniform = torch.full((n, n_out, n_in), 1 / n_out)
    assert RT.routing_entropy(uniform)["entropy_ratio_mean"] == pytest.approx(1.0)
    onehot = torch.zeros(n, n_out, n_in)
    onehot[:, 3] = 1
    s = RT.routing_entropy(onehot, torch.full((n,), 3))
    assert s["entropy_ratio_mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["to_predicted_mean"] == pytest.approx(1.0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    c = torch.rand(n, n_out, n_in)
    per_class = RT.coupling_per_class(c, labels, 4)
    assert np.allclose(per_class[1], c[2:5].double().mean(0).numpy())
    assert np.isnan(per_class[3]).all()
    true = RT.coupling_to_true_class(per_class)
    assert true.shape == (4, n_in) and np.allclose(true[2], c[5, 2].numpy())


def test_perturbation_grid_has_16_rows_one_dimension_each():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    image = torch.rand(1, 28, 28)
    result = perturb_capsule(model, image)
    r = result["reconstructions"]
    assert r.shape == (16, 11, 1, 28, 28)
    with torch.no_grad():
        out = model(image[None])
        assert torch.allclose(r[:, 5], out.reconstruction.expand(16, -1, -1, -1), atol=1e-6)
        caps = out.capsules.clone()
        caps[0, result["class"], 7] += float(result["deltas"][-1])
        assert torch.allclose(r[7, -1], model.reconstruct(caps, torch.tensor([result["class"]]))[0],
                              atol=1e-6)
    assert (dimension_effect(result) > 0).all()
    grid = perturbation_grid(result)
    cell = 28 * R.SCALE + R.PAD
    assert grid.shape == (16 * cell + R.PAD, 11 * cell + R.PAD)


def test_filters_and_feature_maps_are_the_first_convolution():
    model = create_model("efficient_capsnet_tiny").eval()
    w = first_layer_filters(model)
    assert np.array_equal(w, model.stem[0].weight.detach().numpy())
    image = torch.rand(1, 28, 28)
    maps = feature_maps(model, image)
    with torch.no_grad():
        expected = model.stem[0](image[None])[0].numpy()
    assert maps.shape == (8, 24, 24) and np.allclose(maps, expected, atol=1e-6)


def test_models_without_capsules_or_decoder_say_so(synthetic_root, tmp_path):
    class Plain(torch.nn.Module):
        has_capsules = False
        model_name = "cnn_baseline"

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)

    plain = Plain()
    with pytest.raises(EffcnError, match="cnn_baseline has no capsules"):
        require_capsules(plain, "routing coefficients")
    for fn in (lambda: RT.routing_scores(plain, torch.rand(2, 1, 28, 28)),
               lambda: perturb_capsule(plain, torch.rand(1, 28, 28)),
               lambda: R.reconstruct(plain, torch.rand(2, 1, 28, 28))):
        with pytest.raises(EffcnError, match="has no capsules"):
            fn()
    assert first_layer_filters(plain).shape == (4, 1, 3, 3)  # filters work for any conv net
    nodec = create_model("efficient_capsnet_tiny", decoder="none")
    with pytest.raises(EffcnError, match="without a decoder"):
        R.reconstruct(nodec, torch.rand(2, 1, 28, 28))
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="nodec")
                         + ["model.args.decoder=none", "run.recon_every=1"])
    with pytest.raises(ConfigError, match="run.recon_every=1 but model efficient_capsnet_tiny "
                                          "was built without a decoder"):
        Trainer(config, quiet=True).fit()


def test_visualize_writes_every_figure(tiny_run, tmp_path, capsys):
    import shutil
    run_dir = shutil.copytree(tiny_run.path, tmp_path / "run")  # visualize writes RUN/figures
    assert main(["visualize", str(run_dir), "--images", "40"]) == 0
    printed = capsys.readouterr().out
    fig = run_dir / "figures"
    expected = ["reconstructions.png", "reconstructions.gif", "routing_per_class.png",
                "routing_examples.png", "routing_epochs.png", "routing_summary.json",
                "filters.png", "feature_maps.png", "curves.png"]
    for name in expected:
        assert (fig / name).is_file() and f"written: {fig / name}" in printed, name
    perturb = sorted(fig.glob("perturbation_*.png"))
    assert len(perturb) == 3
    summary = json.loads((fig / "routing_summary.json").read_text())
    assert 0 < summary["entropy_ratio_mean"] <= 1 and "routing entropy" in printed
    assert list(summary["entropy_ratio_by_epoch"]) == ["1", "2"]
    from PIL import Image
    with Image.open(fig / "reconstructions.gif") as gif:
        assert gif.n_frames == EPOCHS
    # --epoch draws from that epoch's checkpoint
    assert main(["visualize", str(run_dir), "--epoch", "1", "--what", "recon"]) == 0
    assert (fig / "reconstructions_epoch001.png").is_file()


def test_recon_and_gif_need_only_pillow(tiny_run, tmp_path, monkeypatch):
    """Without matplotlib, the reconstruction grid and GIF are still drawn (Pillow alone)."""
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    written = visualize_run(tiny_run.path, kinds=("recon", "gif"), out_dir=tmp_path, say=lambda _: None)
    assert [p.name for p in written] == ["reconstructions.png", "reconstructions.gif"]
    with pytest.raises(EffcnError, match="matplotlib"):
        visualize_run(tiny_run.path, kinds=("curves",), out_dir=tmp_path, say=lambda _: None)


def test_visualize_and_runs_errors(tiny_run, tmp_path, capsys):
    run_dir = tiny_run.path
    assert main(["visualize", str(run_dir), "--what", "recon,nope"]) == 2
    assert "unknown figure kind(s) nope" in capsys.readouterr().err
    assert main(["visualize", str(run_dir), "--epoch", "9", "--what", "recon"]) == 2
    assert "no checkpoint of epoch 9" in capsys.readouterr().err
    assert main(["visualize", str(tmp_path)]) == 2
    assert "not an effcn run directory" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_runs_lists_finished_and_unfinished_runs(tiny_run, tmp_path, capsys):
    import shutil
    run_dir, summary = tiny_run.path, tiny_run.summary
    root = tmp_path / "all"
    shutil.copytree(run_dir, root / "a" / "done", ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
    shutil.copytree(run_dir, root / "b", ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
    (root / "b" / "summary.json").unlink()
    assert main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "dataset", "model"]
    done = next(line for line in lines if line.startswith("a/done"))
    assert f"{summary['test_acc']:.4f}" in done and "2/2" in done and done.endswith("done")
    unfinished = next(line for line in lines if line.startswith("b "))
    assert unfinished.endswith("unfinished") and f"{summary['best_val_acc']:.4f}" in unfinished
    assert main(["runs", str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["test_acc"] for r in rows} == {"a/done": summary["test_acc"], "b": None}
