"""``effcn sweep FILE.yaml`` with a ``search:`` section: an Optuna study over config fields.

    base: ../configs/mnist_cpu.yaml
    set: [train.epochs=3]
    search:
      sampler: tpe                    # grid | random | tpe
      trials: 20                      # complete + pruned trials the study stops at
      params:
        optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        train.batch_size: {choice: [16, 32, 64]}
        train.recon_weight: {uniform: [0, 1]}
        schedule.step_size: {int: [5, 30]}      # {int: [lo, hi], log: true} for a log scale
      pruner: median                  # none | median | hyperband, on val_acc after each epoch
      storage: sqlite:///runs/sweeps/NAME/study.db   # default; or journal:PATH, or any
                                      # database URL Optuna takes (postgresql://...)
      study: NAME                     # default: the sweep file's name
    seeds: [42]                       # one seed: a trial is one run
    workers: 2
    dir: runs/sweeps/NAME

The objective is the run's best validation accuracy (the test split never steers the search).
Each trial is a normal run directory (``dir/t007-seed42``) trained in its own process; the
parent reads the run's epoch records as they appear, reports them to the study, and stops the
run with SIGTERM when the pruner says so (the trial is then PRUNED, and ``trial.json`` in its
folder says so). Many processes, on one machine or many, can work on one study: start
``effcn sweep FILE --workers N`` wherever the storage is reachable. Re-running the command
continues the study. A worker killed mid-trial leaves its trial RUNNING; with a database storage
(SQLite included) its heartbeat stops, and the next worker to start a trial marks it failed and
retries it, continuing the same run folder. Optuna is the ``sweep`` extra.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from ..errors import ConfigError, EffcnError, RunLocked
from ..io import atomic_write_text, write_json
from ..training.metrics import read_metrics
from ..training.rundir import RunDir
from ..training.config_io import load_config
from .sweep_runs import (SweepRun, format_value, overrides_for, run_command, run_env,
                         wait_for_writer)

SEARCH_KEYS = {"sampler", "trials", "params", "pruner", "storage", "study", "seed",
               "startup_trials", "sampler_startup_trials", "warmup_epochs",
               "heartbeat_interval", "grace_period",
               "max_retry", "poll_seconds"}
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise EffcnError("a sweep with a search section needs Optuna; install it with "
                         "pip install 'effcn[sweep]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class TrialFailed(Exception):
    """The trial's training process failed; the study records the trial as FAIL."""


def check_search(spec: dict, path) -> dict:
    """Defaults and checks of the search section (the sweep file is ``path``)."""
    search = spec["search"]
    if not isinstance(search, dict):
        raise ConfigError(f"sweep file {path}: search must be a mapping (sampler, trials, "
                          f"params, ...).")
    unknown = set(search) - SEARCH_KEYS
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown search key(s) {', '.join(sorted(unknown))}"
                          f"; valid keys are {', '.join(sorted(SEARCH_KEYS))}.")
    if spec.get("grid") or spec.get("random"):
        raise ConfigError(f"sweep file {path} has a search section and grid/random; use one "
                          f"(search: sampler: grid does a grid with Optuna).")
    if len(spec["seeds"]) != 1:
        raise ConfigError(f"sweep file {path}: a search trial is one run, so seeds must hold one "
                          f"seed, not {len(spec['seeds'])}; re-run the best settings over seeds "
                          f"with a grid sweep afterwards.")
    search.setdefault("sampler", "tpe")
    search.setdefault("pruner", "none")
    search.setdefault("study", Path(path).stem)
    search.setdefault("seed", 0)
    search.setdefault("startup_trials", 5)
    search.setdefault("sampler_startup_trials", 10)  # Optuna's TPE default
    search.setdefault("warmup_epochs", 1)
    search.setdefault("heartbeat_interval", 60)
    search.setdefault("grace_period", 120)
    search.setdefault("max_retry", 3)
    search.setdefault("poll_seconds", 1.0)
    search.setdefault("storage", f"sqlite:///{Path(spec['dir']).resolve() / 'study.db'}")
    if search["sampler"] not in SAMPLERS:
        raise ConfigError(f"search.sampler {search['sampler']!r}: choose one of "
                          f"{', '.join(SAMPLERS)}.")
    if search["pruner"] not in PRUNERS:
        raise ConfigError(f"search.pruner {search['pruner']!r}: choose one of "
                          f"{', '.join(PRUNERS)}.")
    for key in ("startup_trials", "sampler_startup_trials", "warmup_epochs"):
        if not isinstance(search[key], int) or search[key] < 0:
            raise ConfigError(f"sweep file {path}: search.{key} must be a whole number >= 0, "
                              f"not {search[key]!r}.")
    if not isinstance(search.get("trials"), int) or search["trials"] < 1:
        raise ConfigError(f"sweep file {path}: search.trials must be a positive integer.")
    params = search.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"sweep file {path}: search.params must map config fields to ranges, "
                          f"e.g. optim.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}.")
    for key, dist in params.items():
        kinds = set(dist) & {"choice", "uniform", "log_uniform", "int"} if isinstance(
            dist, dict) else set()
        if len(kinds) != 1:
            raise ConfigError(f"search param {key!r} needs exactly one of choice, uniform, "
                              f"log_uniform or int (with log: true for a log scale).")
        if search["sampler"] == "grid" and "choice" not in dist:
            raise ConfigError(f"search param {key!r}: the grid sampler takes choice lists only.")
    return search


def suggest(trial, params: dict) -> dict:
    """The trial's value of every searched field."""
    out = {}
    for key, dist in params.items():
        if "choice" in dist:
            out[key] = trial.suggest_categorical(key, list(dist["choice"]))
        elif "uniform" in dist:
            out[key] = trial.suggest_float(key, *map(float, dist["uniform"]))
        elif "log_uniform" in dist:
            out[key] = trial.suggest_float(key, *map(float, dist["log_uniform"]), log=True)
        else:
            lo, hi = map(int, dist["int"])
            out[key] = trial.suggest_int(key, lo, hi, log=bool(dist.get("log")))
    return out


def _storage(optuna, search: dict):
    url = str(search["storage"])
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        try:
            from optuna.storages.journal import JournalFileBackend
        except ImportError:  # Optuna 3.x
            from optuna.storages import JournalFileStorage as JournalFileBackend
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {}
    if url.startswith("sqlite:"):
        Path(url.split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several writers
    import warnings
    from optuna.storages import RDBStorage
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:  # Optuna >= 4.9 names it so; the older name still works there, deprecated
            from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
            kwargs["heartbeat_stale_trial_callback"] = Retry(max_retry=int(search["max_retry"]))
        except ImportError:
            from optuna.storages import RetryFailedTrialCallback as Retry
            kwargs["failed_trial_callback"] = Retry(max_retry=int(search["max_retry"]))
        for attempt in range(10):
            try:
                return RDBStorage(url, heartbeat_interval=int(search["heartbeat_interval"]),
                                  grace_period=int(search["grace_period"]), **kwargs)
            except Exception:
                # Two workers creating the same new database race on its schema; the loser
                # finds it created a moment later.
                if attempt == 9:
                    raise
                time.sleep(0.5 + 0.5 * attempt)


def open_study(spec: dict):
    """The sweep's Optuna study (created on first use, continued afterwards)."""
    optuna = _optuna()
    search = spec["search"]
    storage = _storage(optuna, search)
    seed = sampler_seed(int(search["seed"]), _trials_so_far(storage, search["study"]))
    if search["sampler"] == "grid":
        sampler = optuna.samplers.GridSampler(
            {k: list(d["choice"]) for k, d in search["params"].items()}, seed=seed)
    elif search["sampler"] == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=int(search["sampler_startup_trials"]))
    if search["pruner"] == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=int(search["startup_trials"]),
                                             n_warmup_steps=int(search["warmup_epochs"]))
    elif search["pruner"] == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1)
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(study_name=search["study"], storage=storage,
                               sampler=sampler, pruner=pruner, direction="maximize",
                               load_if_exists=True)


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The seed of this process's sampler: search.seed on a new study, and on a continued one a
    seed mixed from it and the number of trials already there. Optuna's samplers restart their
    random stream in every process, so with search.seed alone a re-run (or a second machine
    joining later) proposes the first trials' settings again."""
    if trials_so_far == 0:
        return seed
    import numpy as np
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def _trials_so_far(storage, study_name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _counted(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _stamp(path: Path):
    """(size, mtime) of a file, None while it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def train_trial(spec: dict, trial, threads: int) -> float:
    """Train the trial's run in a child process; report each epoch's val_acc; prune it with
    SIGTERM when the pruner says so. Returns the run's best validation accuracy."""
    optuna = _optuna()
    params = suggest(trial, spec["search"]["params"])
    # A retry of a failed trial inherits its user attributes: it continues the same folder.
    name = trial.user_attrs.get("run") or f"t{trial.number:03d}-seed{spec['seeds'][0]}"
    run = SweepRun(name, params, int(spec["seeds"][0]))
    run_dir = RunDir(Path(spec["dir"]) / run.name)
    trial.set_user_attr("run", run.name)
    marker = {"study": spec["search"]["study"], "trial": trial.number, "params": params}
    try:  # a retry whose first worker still trains the run waits for it, never trains beside it
        wait_for_writer(run_dir)
    except RunLocked as e:
        raise TrialFailed(str(e)) from None
    if run_dir.summary_path.is_file():  # finished before its worker died
        value = run_dir.summary()["best_val_acc"]
        write_json(run_dir.path / "trial.json", {**marker, "state": "complete"})
        return value
    cmd, _ = run_command(spec, run)
    last_epoch = load_config(spec.get("base"), overrides_for(spec, run)).train.epochs
    log = Path(spec["dir"]) / "logs" / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = run_env(threads)
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        reported, seen, epochs = 0, None, []
        try:
            while True:
                done = proc.poll() is not None
                stamp = _stamp(run_dir.metrics_path)
                if stamp != seen:  # re-read the log only when it changed
                    seen, epochs = stamp, read_metrics(run_dir.metrics_path, kind="epoch")
                for record in epochs[reported:]:
                    trial.report(record["val_acc"], record["epoch"])
                    reported += 1
                    # Pruning at the last epoch saves nothing and would lose the result.
                    if not done and record["epoch"] < last_epoch and trial.should_prune():
                        proc.send_signal(signal.SIGTERM)  # effcn saves step.pt and exits 143
                        proc.wait()
                        write_json(run_dir.path / "trial.json",
                                   {**marker, "state": "pruned", "epoch": record["epoch"]})
                        raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")
                if done:
                    break
                time.sleep(float(spec["search"]["poll_seconds"]))
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0 or not run_dir.summary_path.is_file():
        lines = log.read_text().strip().splitlines()
        raise TrialFailed(lines[-1] if lines else f"exit status {proc.returncode}")
    write_json(run_dir.path / "trial.json", {**marker, "state": "complete"})
    return run_dir.summary()["best_val_acc"]


def run_search(spec: dict, workers: int, threads: int) -> tuple[Path, list[str]]:
    """Work on the sweep's study until it holds search.trials complete + pruned trials; write
    the results. Returns the results.md path and the names of the trials that failed."""
    optuna = _optuna()
    study = open_study(spec)
    search = spec["search"]
    left = search["trials"] - _counted(study)
    print(f"sweep {spec['dir']}: study {search['study']!r} ({search['sampler']} sampler, "
          f"{search['pruner']} pruner) at {_counted(study)}/{search['trials']} trials, "
          f"{workers} worker(s); storage {search['storage']}", flush=True)

    def progress(study, trial):
        print(f"trial {trial.number} ({trial.user_attrs.get('run', '?')}): "
              f"{trial.state.name.lower()}"
              + (f", best val acc {trial.value:.4f}" if trial.value is not None else ""),
              flush=True)

    if left > 0:
        stop = optuna.study.MaxTrialsCallback(
            search["trials"], states=(optuna.trial.TrialState.COMPLETE,
                                      optuna.trial.TrialState.PRUNED))
        study.optimize(lambda t: train_trial(spec, t, threads), n_trials=left, n_jobs=workers,
                       catch=(TrialFailed,), callbacks=[stop, progress])
    failed = [t.user_attrs.get("run", str(t.number)) for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.FAIL
              and not any(r.system_attrs.get("failed_trial") == t.number
                          for r in study.get_trials(deepcopy=False))]
    return write_search_results(spec, study), failed


def write_search_results(spec: dict, study) -> Path:
    """results.csv (one row per trial), results.md (trials by validation accuracy, parameter
    importances when there are enough) and results.png (best so far by trial)."""
    out = Path(spec["dir"])
    keys = list(spec["search"]["params"])
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("run")
        s = RunDir(out / run).summary() if run else {}
        rows.append({"trial": t.number, "state": t.state.name.lower(), **t.params,
                     "run": run or "", "epochs": len(t.intermediate_values),
                     "best_val_acc": t.value if t.value is not None else
                     (max(t.intermediate_values.values()) if t.intermediate_values else None),
                     "test_acc": s.get("test_acc"), "train_seconds": s.get("train_seconds")})
    columns = ["trial", "state", *keys, "run", "epochs", "best_val_acc", "test_acc",
               "train_seconds"]
    atomic_write_text(out / "results.csv", "\n".join(
        [",".join(columns)] + [",".join("" if r.get(c) is None else str(r.get(c))
                                        for c in columns) for r in rows]) + "\n")
    complete = [r for r in rows if r["state"] == "complete"]
    by_value = sorted(rows, key=lambda r: -(r["best_val_acc"] or 0))
    md = [f"Study `{spec['search']['study']}` in `{spec['search']['storage']}`: "
          f"{len(complete)} complete, {sum(r['state'] == 'pruned' for r in rows)} pruned, "
          f"{sum(r['state'] == 'fail' for r in rows)} failed of {len(rows)} trials "
          f"({spec['search']['sampler']} sampler, {spec['search']['pruner']} pruner). "
          f"Objective: best validation accuracy (for pruned trials: the best epoch reached).",
          "", "| " + " | ".join(["trial", "state", *keys, "epochs", "best val acc", "test acc",
                                 "train s"]) + " |", "|" + "---|" * (len(keys) + 6)]
    for r in by_value:
        md.append("| " + " | ".join([str(r["trial"]), r["state"],
                                     *(format_value(r.get(k)) for k in keys), str(r["epochs"]),
                                     _pct(r["best_val_acc"]), _pct(r["test_acc"]),
                                     "—" if r["train_seconds"] is None
                                     else f"{r['train_seconds']:.0f}"]) + " |")
    if len(complete) >= 4 and len(keys) > 1:
        try:
            import optuna
            importances = optuna.importance.get_param_importances(study)
            md += ["", "Parameter importances (Optuna's fANOVA, over the complete trials): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) + "."]
        except Exception as e:  # too few distinct values, a missing optional package, ...
            md += ["", f"Parameter importances not computed ({type(e).__name__}: {e})."]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    _plot_search(out / "results.png", rows)
    print("\n".join(md))
    return out / "results.md"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _plot_search(path: Path, rows: list[dict]) -> None:
    """Validation accuracy by trial (pruned trials hollow) and the best so far."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    best, line = -1.0, []
    for r in sorted(rows, key=lambda r: r["trial"]):
        v = r["best_val_acc"]
        if v is None:
            continue
        style = {"complete": "o", "pruned": "x"}.get(r["state"], ".")
        ax.plot(r["trial"], v, style, color="C0" if r["state"] == "complete" else "C3")
        if r["state"] == "complete":
            best = max(best, v)
            line.append((r["trial"], best))
    if line:
        ax.step(*zip(*line), where="post", color="C0", label="best complete trial so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy (x: pruned)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from ..analysis.imageio import save_figure
    save_figure(fig, path, dpi=120)
