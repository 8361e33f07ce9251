"""Training augmentations and preprocessing, batched on the images' device.

- :mod:`.registry`: the one registry (``data.augment`` names -> augmentations), :func:`build_augment`;
- :mod:`.mnist_policy`: the authors' MNIST augmentation and its spec strings;
- :mod:`.cv2_tf`: cv2's rotation and TensorFlow's Lanczos-3 resize, reproduced in torch;
- :mod:`.preprocess`: smallNORB's and CIFAR-10's pipelines; :mod:`.placement`: ``place``.
"""

from effcn.data.transforms.mnist_policy import AugmentConfig, MNISTAugment, parse_spec
from effcn.data.transforms.registry import AUGMENTATIONS, build_augment, list_augmentations

__all__ = ["AUGMENTATIONS", "AugmentConfig", "MNISTAugment", "build_augment", "list_augmentations",
           "parse_spec"]
