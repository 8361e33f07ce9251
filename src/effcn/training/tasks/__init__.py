"""Tasks: what differs between kinds of training, supplied to the one loop and the one evaluation.

A task knows how a training batch is composed, how the loss is computed from the model's output,
what counts as a hit for the metric, and how its evaluation sets are built. The loop
(training/trainer.py) and the evaluation (training/evaluate.py) know nothing else about it.

    classification   one label per image (MNIST, Fashion-MNIST, smallNORB, CIFAR-10, affNIST, ...)
    semi_supervised  classification with few labels (task.args.labeled) and unsupervised terms
                     (task.args.unlabeled_recon_weight, task.args.consistency_weight)
    multimnist       two overlapping digits: two labels, two reconstructions, two-digit accuracy
    numbers          k digits side by side, one label: the k-digit number (MNIST numbers)

The config names its task (``task.name``, default classification) and the task's own settings
(``task.args``, checked against the task's ``Args`` dataclass). A new task subclasses
:class:`Task`, declares its ``name``, ``Args`` (and the ``dataset`` it needs, if any) and is added
to ``TASKS``, the one registry, with ``register_task``.
"""

import difflib

from ...errors import ConfigError
from .base import Batch, EvalSet, Task
from .classification import ClassificationTask
from .multimnist import MultiMNISTTask
from .numbers import NumbersTask
from .semi_supervised import SemiSupervisedTask

TASKS = {task.name: task for task in (ClassificationTask, SemiSupervisedTask, MultiMNISTTask,
                                      NumbersTask)}


def register_task(cls: type) -> type:
    """Register the Task subclass ``cls`` under its ``name`` (``task.name`` in a config); returns
    cls, so it also works as a class decorator."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is already registered")
    TASKS[cls.name] = cls
    return cls


def task_class(config) -> type:
    """The task class named by ``config.task.name``; a ConfigError for an unknown name."""
    name = config.task.name
    if name not in TASKS:
        hint = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"did you mean {hint[0]}? Otherwise " if hint else ""
        raise ConfigError(f"task.name={name!r} is not a known task; {hint}use one of "
                          f"{', '.join(TASKS)}.")
    return TASKS[name]


def task_of_dataset(dataset: str):
    """The name of the task that needs ``dataset`` (its ``dataset`` attribute), or None."""
    return next((name for name, task in TASKS.items() if task.dataset == dataset), None)


def check_task_dataset(config) -> None:
    """One sentence when the task needs another dataset, or the dataset is another task's."""
    task, dataset = task_class(config), config.data.dataset
    if task.dataset and dataset != task.dataset:
        raise ConfigError(f"task.name={task.name} needs data.dataset={task.dataset}, got "
                          f"{dataset}; set data.dataset={task.dataset} or choose another task.")
    owner = task_of_dataset(dataset)
    if owner not in (None, task.name):
        raise ConfigError(f"data.dataset={dataset} is the {owner} task's dataset, not "
                          f"{task.name}'s; set task.name={owner}.")


def task_args(config) -> Task.Args:
    """The configured task's Args (``config.task.args`` with the task's defaults)."""
    return task_class(config).args_of(config)


def task_for(config) -> Task:
    """The task object of a config."""
    return task_class(config)(config)


__all__ = ["Batch", "EvalSet", "Task", "ClassificationTask", "SemiSupervisedTask",
           "MultiMNISTTask", "NumbersTask", "TASKS", "register_task", "task_class",
           "task_of_dataset", "check_task_dataset", "task_args", "task_for"]
