"""Tasks: what differs between kinds of training, supplied to the one loop and the one evaluation.

A task knows how a training batch is composed, how the loss is computed from the model's output,
what counts as a hit for the metric, and how its evaluation sets are built. The loop
(training/trainer.py) and the evaluation (training/evaluate.py) know nothing else about it.

    classification   one label per image (MNIST, Fashion-MNIST, smallNORB, CIFAR-10, affNIST, ...)
    multimnist       two overlapping digits: two labels, two reconstructions, two-digit accuracy
    numbers          k digits side by side, one label: the k-digit number (MNIST numbers)

A new task subclasses :class:`Task`, is added to ``TASKS`` and is picked by ``task_for(config)``.
"""

from .base import Batch, EvalSet, Task
from .classification import ClassificationTask
from .multimnist import MultiMNISTTask
from .numbers import NumbersTask

TASKS = {"classification": ClassificationTask, "multimnist": MultiMNISTTask,
         "numbers": NumbersTask}
DATASET_TASKS = {"multimnist": "multimnist", "mnist_numbers": "numbers"}  # others: classification


def task_class(config) -> type:
    """The task class of a config: by data.dataset (DATASET_TASKS), else classification."""
    return TASKS[DATASET_TASKS.get(config.data.dataset, "classification")]


def task_for(config) -> Task:
    """The task object of a config."""
    return task_class(config)(config)


__all__ = ["Batch", "EvalSet", "Task", "ClassificationTask", "MultiMNISTTask", "NumbersTask",
           "TASKS", "task_class", "task_for"]
