"""Tasks: what differs between kinds of training, supplied to the one loop and the one evaluation.

A task knows how a training batch is composed, how the loss is computed from the model's output,
what counts as a hit for the metric, and how its evaluation sets are built. The loop
(training/trainer.py) and the evaluation (training/evaluate.py) know nothing else about it.

    classification   one label per image (MNIST, Fashion-MNIST, smallNORB, CIFAR-10, affNIST, ...)
    semi_supervised  classification with few labels (data.labeled) and unsupervised terms
                     (train.unlabeled_recon_weight, train.consistency_weight)
    multimnist       two overlapping digits: two labels, two reconstructions, two-digit accuracy
    numbers          k digits side by side, one label: the k-digit number (MNIST numbers)

A new task subclasses :class:`Task` and is registered with ``register_task``; ``task_for(config)``
picks it for the datasets it was registered for.
"""

from .base import Batch, EvalSet, Task, uses_semi_supervision
from .classification import ClassificationTask
from .multimnist import MultiMNISTTask
from .numbers import NumbersTask
from .semi_supervised import SemiSupervisedTask

TASKS = {"classification": ClassificationTask, "semi_supervised": SemiSupervisedTask,
         "multimnist": MultiMNISTTask, "numbers": NumbersTask}
DATASET_TASKS = {"multimnist": "multimnist", "mnist_numbers": "numbers"}


def register_task(name: str, cls: type, datasets: tuple[str, ...] = ()) -> type:
    """Register the Task subclass ``cls`` as ``name``, picked for runs whose data.dataset is one of
    ``datasets``; returns cls."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = cls
    DATASET_TASKS.update({dataset: name for dataset in datasets})
    return cls


def task_class(config) -> type:
    """The task class of a config: by data.dataset (DATASET_TASKS: MultiMNIST, MNIST numbers);
    else semi-supervised when data.labeled or an unsupervised weight is set; else
    classification."""
    if config.data.dataset in DATASET_TASKS:
        return TASKS[DATASET_TASKS[config.data.dataset]]
    if uses_semi_supervision(config):
        return TASKS["semi_supervised"]
    return TASKS["classification"]


def task_for(config) -> Task:
    """The task object of a config."""
    return task_class(config)(config)


__all__ = ["Batch", "EvalSet", "Task", "ClassificationTask", "SemiSupervisedTask",
           "MultiMNISTTask", "NumbersTask", "TASKS", "register_task", "task_class", "task_for"]
