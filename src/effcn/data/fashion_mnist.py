"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): Zalando article images in MNIST's IDX layout.

Found automatically in Debian's ``dataset-fashion-mnist`` package folder
(``apt-get install dataset-fashion-mnist`` -> /usr/share/datasets/fashion-mnist) as well as in
the usual places (see :meth:`effcn.data.base.LocalDataset.search_dirs`).
"""

from __future__ import annotations

from effcn.data.idx import MNIST_FILES, IDXClassification


class FashionMNIST(IDXClassification):
    """Fashion-MNIST: 60000 train / 10000 test 28x28 grayscale images of 10 clothing classes."""

    name = "fashion_mnist"
    display_name = "Fashion-MNIST"
    description = ("Fashion-MNIST (Zalando): 60000 train / 10000 test grayscale 28x28 images, "
                   "10 clothing classes.")
    files = MNIST_FILES  # same file names as MNIST
    # SHA-256 of the decompressed files, computed from Debian's dataset-fashion-mnist
    # (0.0~git20200523.55506a9-1); their MD5s equal the canonical decompressed MD5s that
    # torchvision lists (f4a8712d..., 9018921c..., 8181f547..., 15d48437...), so the content is
    # the official release even though Debian recompressed the .gz files.
    sha256 = {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }
    mirrors = [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    image_size = (28, 28)
    extra_dirs = ["/usr/share/datasets/fashion-mnist"]
    torchvision_dir = "FashionMNIST"
