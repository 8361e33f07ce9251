"""effcn: Efficient-CapsNet (self-attention routing) and its baselines in PyTorch.

The public face; everything else lives in its layer (see the docs' architecture page):

    effcn.create_model(name, **overrides)   a registered model      effcn.list_models()
    effcn.load_config(path, overrides)      a validated Config
    effcn.config_for_data(folder)           a Config chosen from your images (effcn train --data)
    effcn.Trainer(config).fit()             train, write a run directory, return its summary
    effcn.evaluate_run(run_dir)             evaluate a run's checkpoint, return the report
    effcn.predict(run_dir, images)          classify image files or a tensor batch
    effcn.open_run(run_dir)                 a run's model, config, class names and device
    effcn.RunDir(path)                      every path of a run directory
    effcn.from_pretrained(folder_or_hub_id) a published model (config.json + model.safetensors)
    effcn.save_pretrained(model, folder)    write one

Names are imported on first use, so ``import effcn`` stays light.
"""

from ._version import __version__

_PUBLIC = {
    "create_model": "effcn.models",
    "list_models": "effcn.models",
    "load_config": "effcn.training.config_io",
    "config_for_data": "effcn.training.quickstart",
    "Trainer": "effcn.training.trainer",
    "evaluate_run": "effcn.training.evaluate",
    "predict": "effcn.tools.predict",
    "open_run": "effcn.training.runs",
    "RunDir": "effcn.training.rundir",
    "from_pretrained": "effcn.models.pretrained",
    "save_pretrained": "effcn.models.pretrained",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'effcn' has no attribute {name!r}")
