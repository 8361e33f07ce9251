"""MNIST, and your own images in MNIST's IDX file layout (``idx``).

Located, downloaded and verified as every local dataset (:mod:`effcn.data.base`): files as
``<file>`` or ``<file>.gz``, checked against the SHA-256 of their decompressed content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from effcn.data.idx import MNIST_FILES, IDXClassification
from effcn.errors import DataError


class MNIST(IDXClassification):
    """MNIST handwritten digits: 60000 train / 10000 test 28x28 grayscale images, 10 classes."""

    name = "mnist"
    display_name = "MNIST"
    description = "MNIST handwritten digits: 60000 train / 10000 test grayscale 28x28 images, 10 classes."
    files = MNIST_FILES
    sha256 = {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }
    mirrors = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    classes = [str(i) for i in range(10)]
    image_size = (28, 28)


class IDXFolder(IDXClassification):
    """Your own data in MNIST's file layout under ``root`` (required); no checksums.

    ``classes`` are ``["0", ..., str(max label)]`` over all splits present in ``root``;
    ``image_size`` is taken from the files.
    """

    name = "idx"
    display_name = "IDX"
    description = "Your own uint8 images and labels in MNIST's IDX file layout (needs data.root; no checksums)."
    files = MNIST_FILES
    sha256 = {}
    mirrors = []
    classes = None
    image_size = None

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train", download: bool = False):
        if root is None:
            raise DataError(
                "The idx dataset needs root=/path/to/folder (CLI: --set data.root=...) holding "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] and the t10k-* test files."
            )
        super().__init__(root, split, download=False)
        top = int(self.labels.max()) if len(self.labels) else -1
        # Other splits count too, so train and test agree on the number of classes.
        for other, (_, lbl_name) in self.files.items():
            if other != split and self.find_file(self.root, lbl_name) is not None:
                labels = self._read(self.root, lbl_name)
                if labels.size:
                    top = max(top, int(labels.max()))
        self.classes = [str(i) for i in range(top + 1)]
        self.image_size = tuple(self.images.shape[1:])

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """Only ``root`` itself (nothing without a root)."""
        return [] if root is None else [Path(root).expanduser()]
