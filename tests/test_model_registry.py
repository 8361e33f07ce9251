"""Every registered preset keeps its parameter counts and its seeded initial weights.

tests/fixtures/model_fingerprints.json was written at commit 42bf940 (before the models were
reorganised into models/common.py); a refactor of the model files must leave every preset's
``torch.manual_seed(0); create_model(name)`` state_dict byte-identical. Regenerate only when a
preset is meant to change:  PYTHONPATH=src python tests/test_model_registry.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from effcn.models import count_parameters, create_model, list_models

FINGERPRINTS = Path(__file__).parent / "fixtures" / "model_fingerprints.json"


def fingerprint(name: str) -> dict:
    """Parameter counts and a SHA-256 over the state_dict in key order (each key's name, shape,
    dtype and the tensor's bytes) of the preset built right after torch.manual_seed(0)."""
    torch.manual_seed(0)
    model = create_model(name)
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return {"parameters": count_parameters(model),
            "parameters_without_decoder": count_parameters(model, include_decoder=False),
            "state_dict_sha256": digest.hexdigest()}


def _stored() -> dict:
    return json.loads(FINGERPRINTS.read_text())


def test_every_registered_model_has_a_fingerprint():
    assert sorted(_stored()) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_preset_weights_and_parameter_counts_unchanged(name):
    assert fingerprint(name) == _stored()[name]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    FINGERPRINTS.write_text(json.dumps({n: fingerprint(n) for n in list_models()}, indent=1) + "\n")
