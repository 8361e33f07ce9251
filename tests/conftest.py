"""Fixtures only (builders live in helpers.py): a tiny synthetic dataset in MNIST's IDX layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_synthetic_idx


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_idx(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
