"""What train does to a run folder: no code on resume, saves on signals, one run per folder, the same
settings on resume, no temp folders left, a clear error on a full disk (issue #21)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import _env, _script, config, losses, max_diff, tiny_model, tiny_source, weights

from roberta import atomic
from roberta import train as T


def cut_at(step: int, micro_per_step: int = 1):
    """A loss function that raises KeyboardInterrupt in step `step + 1` (last/ saved every step)."""
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) > step * micro_per_step:
            raise KeyboardInterrupt
        return T.default_loss(model, batch)

    return loss


def interrupted_run(out: Path, step: int = 3, **kw) -> None:
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny_model(), tiny_source(), config(out, save_every_minutes=0, **kw), loss_fn=cut_at(step))
    assert T.load_trainer_state(out / "last")["step"] == step


# ---- no code runs on resume --------------------------------------------------------------------------


class Payload:
    """Unpickling it creates `marker` (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickled_trainer_state_runs_nothing_and_is_refused(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker"
    T.train(tiny_model(), tiny_source(), config(out, max_steps=2))
    last = out / "last"
    (last / T.STATE_FILE).unlink()
    (last / T.TENSORS_FILE).unlink()
    state = {"step": 2, "rng": {"torch": torch.get_rng_state(), "python": Payload(marker)}}
    (last / T.LEGACY_STATE_FILE).write_bytes(pickle.dumps(state))
    with pytest.raises(
        ValueError, match=r"last/trainer_state\.pt is a trainer state in the old pickle format"
    ):
        T.train(tiny_model(), tiny_source(), config(out, max_steps=2), resume=True)
    with pytest.raises(ValueError, match="can run any code"):
        T.load_trainer_state(last)
    assert not marker.exists()


def test_resume_unpickles_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(out)

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    result = T.train(tiny_model(seed=1), tiny_source(), config(out), resume=True)
    assert result.step == 6


def test_trainer_state_round_trips_exactly_through_json_and_safetensors(tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    state = {"step": 3, "best": None, "nested": {7: (1.5, [torch.arange(3)])}, "rng": T.rng_states()}
    plain, tensors = T.split_tensors(state)
    json.dumps(plain, allow_nan=False)  # plain JSON values only
    assert set(tensors) == {"nested.7.1.0", "rng.torch"}
    back = T.join_tensors(json.loads(json.dumps(plain)), tensors)
    assert back["nested"][7][0] == 1.5 and torch.equal(back["nested"][7][1][0], torch.arange(3))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    T.set_rng_states(back["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    with pytest.raises(TypeError, match="cannot hold"):
        T.split_tensors({"f": lambda: 0})


# ---- signals -----------------------------------------------------------------------------------------


def test_sigint_finishes_the_step_saves_last_then_raises_and_resume_is_exact(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    T.train(tiny_model(), tiny_source(), config(whole))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    calls, during = [], []

    def ctrl_c_in_step_4(model, batch):
        calls.append(1)
        during.append(signal.getsignal(signal.SIGTERM))
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return T.default_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):  # no periodic saves: only the signal's
        T.train(tiny_model(), tiny_source(), config(cut, save_every_minutes=None), loss_fn=ctrl_c_in_step_4)
    assert len(calls) == 4 and T.load_trainer_state(cut / "last")["step"] == 4
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert during[0] not in before  # installed for the run only
    T.train(tiny_model(seed=1), tiny_source(), config(cut), resume=True)
    assert max_diff(weights(whole / "last"), weights(cut / "last")) <= 1e-6
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)


def test_an_ignored_sigint_stays_ignored(tmp_path):
    seen = []

    def loss(model, batch):
        seen.append(signal.getsignal(signal.SIGINT))
        return T.default_loss(model, batch)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a `cmd &` job of a script
    try:
        T.train(tiny_model(), tiny_source(), config(tmp_path, max_steps=1), loss_fn=loss)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN]


def test_sigterm_saves_last_ends_the_process_and_resume_matches(tmp_path):
    script = _script(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    uninterrupted = subprocess.Popen([sys.executable, str(script), str(whole), "4", "1", "12"], env=_env())
    proc = subprocess.Popen([sys.executable, str(script), str(cut), "4", "1", "12"], env=_env(SLOW="1"))
    deadline = time.monotonic() + 300  # a busy machine may take long to import torch
    while time.monotonic() < deadline and proc.poll() is None and len(T.read_metrics(cut)) < 2:
        time.sleep(0.05)
    assert not (cut / "last").exists()  # save_every_minutes is 10: nothing saved yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM
    step = T.load_trainer_state(cut / "last")["step"]
    assert 2 <= step < 12 and max(losses(cut)) == step
    subprocess.run([sys.executable, str(script), str(cut), "4", "1", "12"], env=_env(), check=True)
    assert uninterrupted.wait() == 0
    assert max_diff(weights(whole / "last"), weights(cut / "last")) <= 1e-6
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)


# ---- one run per folder ------------------------------------------------------------------------------


def test_resume_needs_a_checkpoint_unless_the_folder_holds_no_run(tmp_path, caplog):
    fresh = tmp_path / "fresh"
    (fresh / "cache").mkdir(parents=True)  # not a run's file
    with caplog.at_level(logging.WARNING, logger="roberta.train"):
        assert T.train(tiny_model(), tiny_source(), config(fresh, max_steps=2), resume=True).step == 2
    assert "starts fresh" in caplog.text

    out = tmp_path / "run"
    T.train(tiny_model(), tiny_source(), config(out, max_steps=2))
    shutil.rmtree(out / "last")
    metrics = (out / T.METRICS_FILE).read_text()
    with pytest.raises(FileNotFoundError, match=r"last holds no checkpoint.*previous run \(metrics\.jsonl"):
        T.train(tiny_model(), tiny_source(), config(out, max_steps=2), resume=True)
    assert (out / T.METRICS_FILE).read_text() == metrics


def test_a_second_run_into_a_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    cfg = config(out, max_steps=4, eval_every=2, early_stopping_metric="acc")
    T.train(tiny_model(), tiny_source(), cfg, eval_fn=lambda m: {"acc": 0.5})
    (out / "notes.txt").write_text("mine")
    files = sorted(p.name for p in out.iterdir())
    assert {"last", "best", "metrics.jsonl", "train_config.json", "notes.txt"} <= set(files)
    with pytest.raises(
        FileExistsError, match=r"already holds a run \(last, best, metrics.jsonl.*--resume.*--overwrite"
    ):
        T.train(tiny_model(), tiny_source(), config(out, max_steps=3))
    assert sorted(p.name for p in out.iterdir()) == files
    with pytest.raises(ValueError, match="choose one"):
        T.train(tiny_model(), tiny_source(), config(out, max_steps=3, overwrite=True), resume=True)

    T.train(tiny_model(), tiny_source(), config(out, max_steps=3, overwrite=True))
    assert sorted(losses(out)) == [1, 2, 3] and not any("eval_acc" in r for r in T.read_metrics(out))
    assert not (out / "best").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / T.CONFIG_FILE).read_text())["max_steps"] == 3


# ---- same settings on resume -------------------------------------------------------------------------


def test_resume_with_other_settings_is_refused_naming_each(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    T.train(tiny_model(), tiny_source(), config(whole))
    interrupted_run(cut)
    metrics = (cut / T.METRICS_FILE).read_text()
    with pytest.raises(ValueError) as info:
        T.train(tiny_model(), tiny_source(), config(cut, lr=2e-3, max_steps=8, grad_accum=2), resume=True)
    message = str(info.value)
    assert "lr: 0.001 in the checkpoint, 0.002 now" in message
    assert "max_steps: 6 in the checkpoint, 8 now" in message
    assert "grad_accum x processes: 1 x 1 in the checkpoint, 2 x 1 now" in message
    assert "seed" not in message and "batch_size" not in message
    fewer = T.ShuffledBatches(32, 4, tiny_source().make_batch)  # other data: 8 steps an epoch, not 16
    with pytest.raises(ValueError, match="steps per epoch \\(the data\\): 16 in the checkpoint, 8 now"):
        T.train(tiny_model(), fewer, config(cut), resume=True)
    assert (cut / T.METRICS_FILE).read_text() == metrics and T.load_trainer_state(cut / "last")["step"] == 3

    free = dict(max_minutes=60, eval_every=100, save_every_minutes=None, num_workers=1, patience=5)
    T.train(tiny_model(seed=1), tiny_source(), config(cut, **free), resume=True)  # these may change
    assert max_diff(weights(whole / "last"), weights(cut / "last")) <= 1e-6
    epochs = [r["epoch"] for r in T.read_metrics(cut)]
    assert (
        epochs == sorted(epochs) and T.load_trainer_state(cut / "last")["train_config"]["max_minutes"] == 60
    )


# ---- temp folders, fsync -----------------------------------------------------------------------------


def test_stale_temp_folders_are_deleted_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    T.train(tiny_model(), tiny_source(), config(out))
    stale = [out / ".last.tmp-k1ll", out / ".best.tmp-x2", out / ".last.old"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    stale += [out / ".metrics.jsonl.abc.tmp", out / ".metrics.png.def.tmp", out / ".train_config.json.g.tmp"]
    for file in stale[3:]:
        file.write_text("half")
    (out / ".keep").write_text("not train's")
    T.train(tiny_model(), tiny_source(), config(out), resume=True)
    assert not any(p.exists() for p in stale)
    assert (out / ".keep").exists() and T.load_trainer_state(out / "last")["step"] == 6


def test_checkpoint_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(src, dst):
        synced.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_rename(src, dst)

    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(T.os, "rename", rename)
    T.save_checkpoint(tmp_path / "last", tiny_model(), {"step": 1, "t": torch.ones(2)})
    moved = next(i for i, s in enumerate(synced) if s.startswith("rename"))
    before = {Path(s).name for s in synced[:moved]}
    tmp = Path(synced[moved].split()[1])
    assert tmp.name.startswith(".last.tmp-") and tmp.name in before
    assert {"config.json", "model.safetensors", T.STATE_FILE, T.TENSORS_FILE} <= before
    assert synced[moved + 1 :] == [str(tmp_path)]  # then the parent folder, for the rename


def test_atomic_file_fsyncs_before_replacing(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    atomic.write_text_atomic(tmp_path / "a.txt", "x")
    assert events == ["fsync", "replace", "fsync"] and (tmp_path / "a.txt").read_text() == "x"


# ---- a full disk -------------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_save, saves = T.save_file, []

    def full_at_the_third(tensors, path):
        saves.append(path)
        if len(saves) == 3:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        real_save(tensors, path)

    monkeypatch.setattr(T, "save_file", full_at_the_third)
    with pytest.raises(
        OSError, match=rf"could not write the checkpoint {out / 'last'}: RuntimeError.*No space left"
    ):
        T.train(tiny_model(), tiny_source(), config(out, save_every_minutes=0))
    assert T.load_trainer_state(out / "last")["step"] == 2 and weights(out / "last")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    def no_space(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(T, "save_file", real_save)
    model = tiny_model()
    monkeypatch.setattr(model, "save_pretrained", no_space)
    with pytest.raises(OSError, match="No space left on the device") as info:
        T.save_checkpoint(out / "last", model, {"step": 9})
    assert isinstance(info.value.__cause__, OSError) and T.load_trainer_state(out / "last")["step"] == 2
