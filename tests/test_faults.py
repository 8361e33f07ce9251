"""File-system faults while training are one sentence with exit status 2, and damage nothing:
a full disk during a checkpoint, run.dir that is a file, a read-only run folder.

The full and read-only disks are small tmpfs mounts (the ``small_tmpfs`` fixture skips, saying
so, where this process may not mount)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import effcn.training.trainer as trainer_module
from effcn.cli import main
from effcn.errors import filesystem_error
from effcn.io import atomic_write_bytes
from effcn.training.callbacks import Callback
from effcn.training.checkpoint import load_checkpoint

from helpers import quick_overrides, remount_readonly, set_args


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _temporary_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


class FillDiskAfterEpoch(Callback):
    """After epoch ``epoch``'s checkpoints: fill the disk up to ``leave`` free bytes."""

    def __init__(self, folder, epoch: int = 1, leave: int = 128 * 1024):
        self.folder, self.epoch, self.leave = folder, epoch, leave

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            stat = os.statvfs(self.folder)
            free = stat.f_bavail * stat.f_frsize
            (self.folder / "filler").write_bytes(b"\0" * max(free - self.leave, 0))


def test_a_full_disk_during_a_checkpoint_is_one_sentence_and_keeps_the_last_one(
        small_tmpfs, synthetic_root, monkeypatch, capsys):
    disk = small_tmpfs(8 * 1024)   # two tiny-model checkpoints are about 2 MB
    from_config = trainer_module.callbacks_from_config
    monkeypatch.setattr(trainer_module, "callbacks_from_config",
                        lambda config: from_config(config) + [FillDiskAfterEpoch(disk)])
    overrides = quick_overrides(synthetic_root, disk, epochs=3, name="full")
    assert main(["train", "--quiet", *set_args(overrides)]) == 2
    run = disk / "full"
    err = _one_line_error(capsys)
    assert err.startswith(f"effcn train: error: could not write {run}/checkpoints/")
    assert "no space is left on the device" in err
    assert err.endswith(f"free space; checkpoints/last.pt holds epoch 1, so resume with effcn "
                        f"train --resume {run}.")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1   # whole, loads
    assert not _temporary_files(disk)

    (disk / "filler").unlink()  # the way out the sentence gives
    monkeypatch.setattr(trainer_module, "callbacks_from_config", from_config)
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_an_atomic_write_that_fails_names_the_target_and_leaves_no_temporary_file(
        small_tmpfs):
    disk = small_tmpfs(64)
    target = disk / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"x" * 256 * 1024)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"old" and not _temporary_files(disk)
    message = str(filesystem_error(caught.value))
    assert message.startswith(f"could not write {target}: no space is left on the device")


def test_run_dir_that_is_a_file_is_one_sentence(synthetic_root, tmp_path, capsys):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    for run_dir, expected in ((a_file, "is a file, not a folder"),
                              (a_file / "sub", f"{a_file} is a file, not a folder")):
        overrides = quick_overrides(synthetic_root, run_dir, epochs=1, name="r")
        assert main(["train", "--quiet", *set_args(overrides)]) == 2
        err = _one_line_error(capsys)
        assert expected in err and str(a_file) in err, err
    assert a_file.read_text() == "x"


def test_a_read_only_run_folder_is_one_sentence_and_nothing_changes(
        small_tmpfs, synthetic_root, capsys):
    disk = small_tmpfs(16 * 1024)
    overrides = quick_overrides(synthetic_root, disk, epochs=1, name="ro")
    assert main(["train", "--quiet", *set_args(overrides)]) == 0
    run = disk / "ro"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    remount_readonly(disk)
    assert main(["train", "--quiet", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    err = _one_line_error(capsys)
    assert "the file system is read-only" in err and str(run) in err
    assert err.endswith(f"checkpoints/last.pt holds epoch 1, so resume with effcn train "
                        f"--resume {run}.")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # A new run there: the run folder cannot even be created.
    assert main(["train", "--quiet", *set_args(quick_overrides(synthetic_root, disk, 1, "new"))]) == 2
    assert "the file system is read-only" in _one_line_error(capsys)


def test_a_permission_denied_folder_is_one_sentence_when_not_root(synthetic_root, tmp_path,
                                                                   capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes: the read-only tmpfs test covers this case")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        overrides = quick_overrides(synthetic_root, locked, epochs=1, name="r")
        assert main(["train", "--quiet", *set_args(overrides)]) == 2
        assert "permission was denied" in _one_line_error(capsys)
    finally:
        shutil.rmtree(locked, ignore_errors=True)


def test_other_os_errors_are_not_described():
    assert filesystem_error(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    assert filesystem_error(OSError(errno.EIO, "I/O error", "x")) is None


def test_a_download_onto_a_full_disk_stops_at_once_and_leaves_nothing(small_tmpfs, tmp_path):
    from effcn.data.download import download_url
    source = tmp_path / "archive.bin"
    source.write_bytes(os.urandom(512 * 1024))
    disk = small_tmpfs(128)
    with pytest.raises(OSError) as caught:
        download_url(source.as_uri(), disk / "archive.bin")
    assert caught.value.errno == errno.ENOSPC
    assert "could not write" in str(filesystem_error(caught.value))
    assert not list(disk.iterdir())       # neither the file nor its .part
