"""torch.hub entry points: ``torch.hub.load(REPO, "efficient_capsnet", ...)``.

    torch.hub.load("path/to/effcn", "efficient_capsnet", source="local",
                   preset="efficient_capsnet_mnist")                  # random weights
    torch.hub.load("path/to/effcn", "efficient_capsnet", source="local",
                   pretrained="folder/or/user-name")                  # effcn publish's folder

Weights come only from pretrained folders (model.safetensors + config.json, read by
effcn.from_pretrained: no code from the file is executed).
"""

import os
import sys

dependencies = ["torch", "numpy", "yaml"]

# torch.hub puts the repository on sys.path; the package itself lives under src/
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def efficient_capsnet(pretrained=None, preset="efficient_capsnet_mnist", **overrides):
    """A registered model: ``pretrained`` (a folder written by effcn publish, or a Hub id) with
    its weights, in eval mode; else ``preset`` built with ``overrides`` of its config fields."""
    import effcn
    if pretrained:
        return effcn.from_pretrained(pretrained)
    return effcn.create_model(preset, **overrides)
