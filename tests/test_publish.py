"""effcn publish / from_pretrained / torch.hub: pretrained folders (model.safetensors +
config.json + README.md) written from a run and read back safely."""

import json
import shutil
import sys
import tracemalloc

import numpy as np
import pytest
import torch

import effcn
from effcn.errors import CheckpointError, ConfigError, EffcnError
from effcn.models import create_model, list_models
from effcn.models import pretrained as pretrained_module
from effcn.models.pretrained import from_pretrained, load_pretrained, save_pretrained
from effcn.tools.publish import publish_run
from effcn.training.runs import open_run

from helpers import REPO, assert_one_sentence_error, effcn_in_process, write_keras_h5

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture
def published(tiny_run, tmp_path):
    """The shared tiny run published into tmp_path/pub."""
    return publish_run(tiny_run.path, tmp_path / "pub").folder


def _images(n=4, size=28, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _same_outputs(a, b, images):
    with torch.no_grad():
        x, y = a.eval()(images), b.eval()(images)
    return torch.equal(x.lengths, y.lengths) and torch.equal(x.reconstruction, y.reconstruction)


def test_round_trip_gives_identical_outputs(tiny_run, published):
    run_model = open_run(tiny_run.path, device="cpu").model
    model = effcn.from_pretrained(published)
    assert model.model_name == "efficient_capsnet_tiny" and not model.training
    assert _same_outputs(run_model, model, _images())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    save_pretrained(model, tmp_path / name)
    loaded = from_pretrained(tmp_path / name)
    assert loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_weights_load_with_safetensors_alone_and_config_is_plain_json(tiny_run, published):
    opened = open_run(tiny_run.path, device="cpu")
    tensors = safetensors_torch.load_file(str(published / "model.safetensors"))
    expected = opened.model.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    config = json.loads((published / "config.json").read_text())
    assert config["library_name"] == "effcn" and config["model_name"] == "efficient_capsnet_tiny"
    assert config["model_args"]["num_classes"] == 10 and len(config["class_names"]) == 10
    assert config["input_size"] == [1, 28, 28] and config["pixel_divisor"] == 255.0
    assert config["run_config"]["data"]["dataset"] == "idx"
    assert config["run_config"]["data"]["root"] is None and "run" not in config["run_config"]
    assert config["test"]["acc"] == tiny_run.summary["test_acc"]


def test_the_card(tiny_run, published):
    card = (published / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: effcn" in front and "license: other" in front and "metrics:" in front
    assert "pipeline_tag: image-classification" in front
    assert f"**{tiny_run.summary['test_acc']:.4f}**" in card
    assert "effcn eval THIS_FOLDER --set data.root=" in card
    assert f"| seed | {tiny_run.config.train.seed} " in card
    assert "## Data licence" in card and "yours: state it" in card
    assert "| command | `not the effcn command (the Python API)" in card  # pytest trained it


def test_the_card_gives_the_training_command(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.path, tmp_path / "run")
    env = json.loads((run / "env.json").read_text())
    env["argv"] = ["/venv/bin/effcn", "train", "--config", "configs/mnist.yaml", "--set",
                   "train.seed=7 "]
    (run / "env.json").write_text(json.dumps(env))
    card = (publish_run(run, tmp_path / "pub").folder / "README.md").read_text()
    assert "| command | `effcn train --config configs/mnist.yaml --set 'train.seed=7 '` |" in card


def test_eval_and_predict_on_the_folder_reproduce_the_run(tiny_run, published, tmp_path, capsys):
    code, out, err = effcn_in_process(["eval", published, "--set",
                                       f"data.root={tiny_run.data_root}"], capsys)
    assert code == 0, err
    report = json.loads((published / "eval" / "test_model.json").read_text())
    assert report["images"] == tiny_run.summary["test_images"]
    assert report["acc"] == pytest.approx(tiny_run.summary["test_acc"], abs=1e-12)
    assert f"{report['acc']:.4f}" in (published / "README.md").read_text()

    from PIL import Image
    from effcn.data.idx import read_idx
    image = tmp_path / "digit.png"
    Image.fromarray(read_idx(tiny_run.data_root / "t10k-images-idx3-ubyte.gz")[0]).save(image)
    rows = []
    for source in (published, tiny_run.path):
        code, out, err = effcn_in_process(["predict", source, image, "--json"], capsys)
        assert code == 0, err
        rows.append(json.loads(out))
    assert rows[0] == rows[1] and len(rows[0]["lengths"]) == 10


def test_publish_refuses_a_non_empty_folder_unless_forced(tiny_run, tmp_path, capsys):
    out = tmp_path / "pub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = effcn_in_process(["publish", tiny_run.path, "--out", out], capsys)
    assert_one_sentence_error(code, err, "is not empty; choose another --out folder")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, out_text, err = effcn_in_process(["publish", tiny_run.path, "--out", out, "--force"],
                                           capsys)
    assert code == 0, err
    assert "written:" in out_text and (out / "model.safetensors").is_file()


def test_a_hub_id_is_downloaded_with_snapshot_download(published, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    asked = []

    def fake_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(published)

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    model = from_pretrained("someone/effcn-tiny")
    assert asked == ["someone/effcn-tiny"]
    assert _same_outputs(model, from_pretrained(published), _images())
    (published / "model.safetensors").unlink()  # a Hub repository of something else
    with pytest.raises(EffcnError, match="has no config.json and model.safetensors, so it is "
                                         "not an effcn model"):
        from_pretrained("someone/effcn-tiny")


def test_a_hub_id_without_huggingface_hub_or_network_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(EffcnError, match=r"needs huggingface_hub: pip install 'effcn\[hub\]'"):
        from_pretrained("someone/not-here")
    monkeypatch.undo()
    hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(EffcnError, match="could not download someone/not-here .*network is "
                                         "unreachable.*check the id and the network"):
        from_pretrained("someone/not-here")
    with pytest.raises(EffcnError, match="neither a folder nor a Hub id"):
        from_pretrained("no/such/folder")


def test_pytorch_model_hub_mixin_reads_and_writes_the_folder(published, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    from effcn.models.pretrained import EffcnHubModel
    loaded = EffcnHubModel.from_pretrained(str(published))
    assert isinstance(loaded, hub.PyTorchModelHubMixin)
    assert _same_outputs(loaded.model, from_pretrained(published), _images())
    loaded.save_pretrained(tmp_path / "again")
    assert _same_outputs(from_pretrained(tmp_path / "again"), loaded.model, _images())
    assert json.loads((tmp_path / "again" / "config.json").read_text())["class_names"] == \
        json.loads((published / "config.json").read_text())["class_names"]
    config = json.loads((published / "config.json").read_text())
    config["model_args"]["num_classes"] = 10**9
    (published / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="larger than effcn allows"):
        EffcnHubModel.from_pretrained(str(published))


def test_torch_hub_load_from_the_repository(published):
    model = torch.hub.load(str(REPO), "efficient_capsnet", source="local", pretrained=str(published))
    assert _same_outputs(model, from_pretrained(published), _images())
    fresh = torch.hub.load(str(REPO), "efficient_capsnet", source="local",
                           preset="efficient_capsnet_tiny", num_classes=4)
    assert fresh.model_name == "efficient_capsnet_tiny" and fresh.config.num_classes == 4


def test_a_billion_classes_is_refused_before_anything_is_built(published, monkeypatch):
    config = json.loads((published / "config.json").read_text())
    config["model_args"]["num_classes"] = 10**9
    (published / "config.json").write_text(json.dumps(config))

    def never(*args, **kwargs):
        raise AssertionError("create_model was called")

    monkeypatch.setattr(pretrained_module, "create_model", never)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="num_classes is 1000000000, larger than effcn "
                                              "allows"):
            from_pretrained(published)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_sizes_within_bounds_are_checked_on_the_meta_device(published, monkeypatch):
    """60,000 classes pass the per-number bound; the network is then built on the meta device
    only (no memory), and its tensors do not match the file: refused naming the tensor and
    both shapes, without a network ever built on a real device."""
    config = json.loads((published / "config.json").read_text())
    config["model_args"]["num_classes"] = 60000
    config["class_names"] = []
    (published / "config.json").write_text(json.dumps(config))
    devices = []

    def recording(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device at the call
        return create_model(*args, **kwargs)

    monkeypatch.setattr(pretrained_module, "create_model", recording)
    with pytest.raises(CheckpointError, match=r"tensor 'digit_caps\.\w+' has shape \(10, .*\) "
                                              r"in .* but the model in config.json expects "
                                              r"\(60000, "):
        from_pretrained(published)
    assert devices == ["meta"]


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(published):
    path = published / "model.safetensors"
    tensors = safetensors_torch.load_file(str(path))
    key = "digit_caps.W"
    expected = tuple(tensors[key].shape)
    tensors[key] = tensors[key][..., :-1].contiguous()
    path.write_bytes(safetensors_torch.save(tensors))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(published)
    message = str(info.value)
    assert f"tensor {key!r}" in message and str(expected) in message
    assert str(tuple(tensors[key].shape)) in message


@pytest.mark.parametrize("change, phrase", [
    (lambda c: c.update(model_args={**c["model_args"], "stem": [[8, 3, 1]] * 1000}),
     "has 1000 entries"),
    (lambda c: c.update(pixel_divisor=float("nan")), "pixel_divisor must be a positive number"),
    (lambda c: c.update(class_names=["x"] * 3), "lists 3 class names for a model of 10"),
    (lambda c: c.update(model_name="no_such_model"), "unknown model 'no_such_model'"),
])
def test_foreign_configs_are_refused_in_one_sentence(published, change, phrase):
    config = json.loads((published / "config.json").read_text())
    change(config)
    (published / "config.json").write_text(json.dumps(config))
    with pytest.raises(EffcnError, match=phrase):
        from_pretrained(published)


def test_config_json_that_is_not_json_or_nested_too_deeply_is_refused(published):
    for text in ("{not json", "[" * 100000 + "]" * 100000):
        (published / "config.json").write_text(text)
        with pytest.raises(ConfigError, match="is not valid JSON"):
            from_pretrained(published)


def test_a_pickle_in_place_of_the_weights_is_refused(published):
    torch.save({"x": torch.zeros(1)}, published / "model.safetensors")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        from_pretrained(published)


def test_the_imported_keras_weights_publish_the_same_way(tmp_path, capsys):
    pytest.importorskip("h5py")
    from effcn.models.keras_import import import_keras_weights
    h5 = tmp_path / "weights.h5"
    write_keras_h5(h5)
    code, _, err = effcn_in_process(["import-keras", h5, "--preset", "smallnorb", "--out",
                                     tmp_path / "imported"], capsys)
    assert code == 0, err
    code, out, err = effcn_in_process(["publish", tmp_path / "imported", "--out",
                                       tmp_path / "pub"], capsys)
    assert code == 0, err
    assert "no test figure" in out
    reference, _ = import_keras_weights(h5, "smallnorb")
    loaded = load_pretrained(tmp_path / "pub")
    from effcn.models import input_shape
    shape = input_shape(reference.config)
    images = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    assert _same_outputs(reference, loaded.model, images)
    assert loaded.config["dataset"] == "smallnorb" and loaded.config["imported_from"] == str(h5)
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "Not measured" in card and "effcn import-keras" in card and "smallNORB" in card
    assert "The authors' trained Keras weights" in card and "Measure it" in card


def test_a_folder_saved_without_a_run_predicts(tmp_path):
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny", num_classes=3)
    save_pretrained(model, tmp_path / "plain", class_names=["a", "b", "c"], pixel_divisor=256.0)
    opened = open_run(tmp_path / "plain", device="cpu")
    assert opened.class_names == ["a", "b", "c"] and opened.config.data.pixel_divisor == 256.0
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    result = effcn.predict(opened, images)
    with torch.no_grad():
        expected = model.eval()(images.float() / 256.0).lengths
    assert torch.allclose(torch.tensor([p.scores for p in result.predictions]), expected)
    with pytest.raises(EffcnError, match="pretrained folder with one set of weights"):
        open_run(tmp_path / "plain", checkpoint="last")
