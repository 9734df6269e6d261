"""The shared training loop: schedule, exact resume, atomic checkpoints, early stopping, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roberta import train as T
from roberta.config import RobertaConfig
from roberta.heads import RobertaForSequenceClassification

REPO = Path(__file__).resolve().parents[1]

# The tiny model and data, also written into the subprocess scripts below (one definition).
SETUP = """
import torch
from roberta.config import RobertaConfig
from roberta.heads import RobertaForSequenceClassification
from roberta.train import ShuffledBatches

def tiny_model(dropout=0.1, seed=0):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=20, num_labels=2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return RobertaForSequenceClassification(cfg)

def make_batch(items, epoch):
    g = torch.Generator().manual_seed(1000)
    ids = torch.randint(3, 50, (64, 8), generator=g)[items]          # (B, 8) fixed per item
    labels = (ids[:, 0] > 25).long()  # learnable: the classifier reads position 0
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

def tiny_source(batch_size=4, seed=0):
    return ShuffledBatches(64, batch_size, make_batch, seed=seed)
"""
_ns: dict = {}
exec(SETUP, _ns)  # the same definitions here
tiny_model, tiny_source = _ns["tiny_model"], _ns["tiny_source"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in T.read_metrics(out) if "loss" in r}


def config(out: Path, **kw) -> T.TrainConfig:
    base = dict(out_dir=str(out), lr=1e-3, batch_size=4, max_steps=6, log_every=1, progress=False)
    return T.TrainConfig(**{**base, **kw})


# ---- pieces ----------------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = T.build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.0, 7 / 8])
    assert lrs[-1] == pytest.approx(1 / 8) and opt.param_groups[0]["lr"] == 0.0


def test_no_weight_decay_on_biases_and_layernorm():
    model = tiny_model()
    opt = T.build_optimizer(model, config(Path("unused")))
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "roberta.embeddings.norm.weight",
        "classifier.dense.bias",
    }
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6


def test_fused_adamw_gives_the_per_tensor_update():
    """build_optimizer's fused AdamW (the fast path) against torch's per-tensor loop, same groups."""
    fast, plain = tiny_model(0.0), tiny_model(0.0)
    opt = T.build_optimizer(fast, config(Path("unused")))
    assert opt.defaults["fused"]
    same = ("lr", "betas", "eps", "weight_decay")
    groups = [{**{k: g[k] for k in same}, "params": params(plain, names(fast, g))} for g in opt.param_groups]
    ref = torch.optim.AdamW(groups, foreach=False)
    batch = _ns["make_batch"](list(range(8)), 0)
    for _ in range(5):
        for model, o in ((fast, opt), (plain, ref)):
            model(**batch).loss.backward()
            o.step()
            o.zero_grad()
    assert max_diff(fast.state_dict(), plain.state_dict()) <= 1e-6
    assert max_diff(fast.state_dict(), tiny_model(0.0).state_dict()) > 1e-3  # it did train


def test_fused_adamw_resumes_a_state_saved_by_the_per_tensor_loop():
    """Runs checkpointed before the fused optimizer (trainer_state.pt) continue with it."""
    model = tiny_model(0.0)
    groups = T.build_optimizer(model, config(Path("unused"))).param_groups
    old = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups])
    model(**_ns["make_batch"](list(range(8)), 0)).loss.backward()
    old.step()
    new = T.build_optimizer(model, config(Path("unused")))
    new.load_state_dict(old.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new.step()
    assert new.defaults["fused"] and max_diff(before, model.state_dict()) > 0


def names(model: torch.nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def params(model: torch.nn.Module, wanted: list[str]) -> list[torch.nn.Parameter]:
    return [dict(model.named_parameters())[n] for n in wanted]


def test_shuffled_batches_cover_each_epoch_once_in_a_new_order():
    src = tiny_source(batch_size=4)
    assert len(src) == 16
    for epoch in (0, 1):
        seen = torch.cat([src.order(epoch)[i * 4 : (i + 1) * 4] for i in range(16)])
        assert sorted(seen.tolist()) == list(range(64))
    assert not torch.equal(src.order(0), src.order(1))
    assert torch.equal(src.batch(1, 3)["input_ids"], tiny_source().batch(1, 3)["input_ids"])


def test_micro_batches_of_ranks_interleave():
    one = T.micro_batch_indices(5, grad_accum=2, d=T.Dist(0, 1))
    two = [T.micro_batch_indices(5, grad_accum=1, d=T.Dist(r, 2))[0] for r in (0, 1)]
    assert one == two == [10, 11]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        T.TrainConfig(out_dir="x")
    with pytest.raises(ValueError, match="precision"):
        T.TrainConfig(out_dir="x", max_steps=1, precision="int8")
    with pytest.raises(ValueError, match="grad_accum"):
        T.Trainer(tiny_model(), tiny_source(), config(Path("x"), grad_accum=32))


# ---- training, resume ------------------------------------------------------------------------------


def test_loss_goes_down_and_files_are_written(tmp_path):
    result = T.train(tiny_model(0.0), tiny_source(8), config(tmp_path, max_steps=40, lr=3e-3, log_every=5))
    curve = list(losses(tmp_path).values())
    assert result.step == 40 and result.stopped_by == "max_steps"
    assert sum(curve[-2:]) / 2 < curve[0] - 0.1
    assert (tmp_path / "last" / "config.json").exists() and (tmp_path / "last" / T.STATE_FILE).exists()
    state = T.load_trainer_state(tmp_path / "last")
    assert state["step"] == 40 and state["step_in_epoch"] == 40 % 8
    pytest.importorskip("matplotlib")
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_resume_after_interruption_is_exact(tmp_path):
    """Killed after step 3 (last/ saved every step), resumed: same losses and weights as one run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    T.train(tiny_model(), tiny_source(), config(whole))

    calls = []

    def dies_at_step_4(model, batch):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return T.default_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        T.train(tiny_model(), tiny_source(), config(cut, save_every_minutes=0), loss_fn=dies_at_step_4)
    assert T.load_trainer_state(cut / "last")["step"] == 3
    T.train(tiny_model(seed=1), tiny_source(), config(cut), resume=True)  # other init: resume must load
    assert max_diff(weights(whole / "last"), weights(cut / "last")) <= 1e-6
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)


def test_worker_processes_give_the_same_run_and_resume(tmp_path):
    """num_workers builds batches ahead in other processes: same losses and weights as building
    them in the loop, also when the run is cut after step 3 and resumed (workers restart there)."""
    plain, ahead, cut = tmp_path / "plain", tmp_path / "ahead", tmp_path / "cut"
    T.train(tiny_model(), tiny_source(), config(plain, grad_accum=2))
    T.train(tiny_model(), tiny_source(), config(ahead, grad_accum=2, num_workers=2))
    assert max_diff(weights(plain / "last"), weights(ahead / "last")) == 0.0
    assert losses(ahead) == losses(plain)

    calls = []

    def dies_at_step_4(model, batch):
        calls.append(1)
        if len(calls) > 6:  # 2 micro-batches per step
            raise KeyboardInterrupt
        return T.default_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        T.train(
            tiny_model(),
            tiny_source(),
            config(cut, grad_accum=2, num_workers=2, save_every_minutes=0),
            loss_fn=dies_at_step_4,
        )
    T.train(tiny_model(seed=1), tiny_source(), config(cut, grad_accum=2, num_workers=2), resume=True)
    assert max_diff(weights(plain / "last"), weights(cut / "last")) <= 1e-6


def test_early_stopping_keeps_the_best(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.1, 0.1])
    cfg = config(tmp_path, max_steps=20, eval_every=2, early_stopping_metric="acc", patience=2)
    result = T.train(tiny_model(), tiny_source(), cfg, eval_fn=lambda m: {"acc": next(scores)})
    assert result.stopped_by == "early_stopping" and result.step == 8 and result.best_metric == 0.7
    best = T.load_trainer_state(tmp_path / "best")
    assert best["step"] == 4
    evals = [r["eval_acc"] for r in T.read_metrics(tmp_path) if "eval_acc" in r]
    assert evals == [0.5, 0.7, 0.6, 0.65]


def test_max_minutes_stops_training(tmp_path):
    cfg = config(tmp_path, max_steps=10_000, max_minutes=0.02)
    result = T.train(tiny_model(), tiny_source(), cfg)
    assert result.stopped_by == "max_minutes" and 0 < result.step < 10_000


def test_max_minutes_leaves_room_for_the_final_evaluation(tmp_path):
    """A slow evaluation (0.5 s) is kept in reserve: training stops early enough for the final one to
    fit under the cap, instead of starting it at the cap."""

    def slow_eval(model):
        time.sleep(0.5)
        return {"acc": 0.5}

    cfg = config(tmp_path, max_steps=10_000, max_minutes=0.05, eval_every=4)  # 3 s
    result = T.train(tiny_model(), tiny_source(), cfg, eval_fn=slow_eval)
    assert result.stopped_by == "max_minutes"
    last_step = [r["elapsed_s"] for r in T.read_metrics(tmp_path) if "loss" in r][-1]
    assert last_step + 0.5 <= 3.0 + 0.3  # the final evaluation ends by the cap (a step's slack)


def test_a_resume_whose_time_cap_is_used_up_says_so(tmp_path):
    """max_minutes counts the whole run: a resume with a cap the first start used up is an error, not 0 steps."""
    T.train(tiny_model(), tiny_source(), config(tmp_path, max_steps=10_000, max_minutes=0.01))
    with pytest.raises(ValueError, match=r"counts the whole run, resumes included.*raise --max-minutes"):
        T.train(
            tiny_model(), tiny_source(), config(tmp_path, max_steps=10_000, max_minutes=0.01), resume=True
        )


# ---- atomic checkpoints ----------------------------------------------------------------------------


def test_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    model = tiny_model()
    T.save_checkpoint(tmp_path / "last", model, {"step": 1})
    before = weights(tmp_path / "last")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def dies(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(T, "save_file", dies)  # the model files are written, then the state fails
    with pytest.raises(OSError, match="could not write the checkpoint .*last.*disk full"):
        T.save_checkpoint(tmp_path / "last", model, {"step": 2})
    monkeypatch.undo()
    assert max_diff(before, weights(tmp_path / "last")) == 0
    assert T.load_trainer_state(tmp_path / "last")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_kill_between_the_renames_is_recovered(tmp_path, monkeypatch):
    T.save_checkpoint(tmp_path / "last", tiny_model(), {"step": 1})
    real_rename, calls = os.rename, []

    def second_rename_dies(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed after moving the old folder aside
        real_rename(src, dst)

    monkeypatch.setattr(T.os, "rename", second_rename_dies)
    with pytest.raises(KeyboardInterrupt):
        T.save_checkpoint(tmp_path / "last", tiny_model(seed=1), {"step": 2})
    monkeypatch.undo()
    assert not (tmp_path / "last").exists()
    assert T.recover_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert T.load_trainer_state(tmp_path / "last")["step"] == 1


SAVE_LOOP = """
import sys
from pathlib import Path
from roberta.train import save_checkpoint
{setup}
model = tiny_model()
step = 0
while True:
    step += 1
    save_checkpoint(Path(sys.argv[1]), model, {{"step": step, "pad": torch.randn(200_000)}})
    print(step, flush=True)
"""


def test_sigkill_during_saves_never_leaves_a_half_checkpoint(tmp_path):
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP.format(setup=SETUP))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for delay in (0.03, 0.11, 0.23):
        out = tmp_path / f"run{delay}"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out / "last")], env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout.readline()  # one save done
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        folder = T.recover_checkpoint(out / "last")
        assert folder is not None
        state = T.load_trainer_state(folder)
        assert state["step"] >= 1 and state["pad"].numel() == 200_000
        assert max_diff(weights(folder), tiny_model().hf_state_dict()) == 0
        json.loads((folder / "config.json").read_text())


# ---- SIGKILL mid-training, then resume --------------------------------------------------------------

TRAIN_SCRIPT = """
import os, sys, time
import torch
from roberta import train as T
{setup}
torch.set_num_threads(1)
def slow_loss(model, batch):
    if os.environ.get("SLOW"):
        time.sleep(0.15)
    return T.default_loss(model, batch)
cfg = T.TrainConfig(out_dir=sys.argv[1], lr=1e-3, batch_size=int(sys.argv[2]), grad_accum=int(sys.argv[3]),
                    max_steps=int(sys.argv[4]), log_every=1, progress=False,
                    save_every_minutes=float(os.environ.get("SAVE_MINUTES", "10")))
T.train(tiny_model(dropout=float(os.environ.get("DROPOUT", "0.1"))), tiny_source(int(sys.argv[2])), cfg,
        loss_fn=slow_loss, resume=True)
"""


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "train_script.py"
    path.write_text(TRAIN_SCRIPT.format(setup=SETUP))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    script = _script(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    uninterrupted = subprocess.Popen([sys.executable, str(script), str(whole), "4", "1", "12"], env=_env())
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cut), "4", "1", "12"], env=_env(SLOW="1", SAVE_MINUTES="0")
    )
    deadline = time.monotonic() + 300  # generous: a busy machine may take long to import torch
    while time.monotonic() < deadline and proc.poll() is None and not (cut / "last" / T.STATE_FILE).exists():
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = T.recover_checkpoint(cut / "last")
    assert saved is not None, "the run was killed before its first checkpoint"
    step = T.load_trainer_state(saved)["step"]
    assert 1 <= step < 12, "the kill should land mid-run"
    subprocess.run([sys.executable, str(script), str(cut), "4", "1", "12"], env=_env(), check=True)
    assert uninterrupted.wait() == 0
    assert max_diff(weights(whole / "last"), weights(cut / "last")) <= 1e-6
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 ranks x batch 4 (gloo) == 1 process x 2 accumulated micro-batches of 4: same loss curve."""
    script = _script(tmp_path)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    one, two = tmp_path / "one", tmp_path / "two"
    env = _env(DROPOUT="0.0")  # dropout draws differ between layouts; the sums must not
    single = subprocess.Popen([sys.executable, str(script), str(one), "4", "2", "5"], env=env)
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script), str(two), "4", "1", "5"]
    subprocess.run(cmd, env=env, check=True, timeout=240)
    assert single.wait() == 0
    assert losses(two) == pytest.approx(losses(one), abs=1e-4) and len(losses(two)) == 5
    assert max_diff(weights(one / "last"), weights(two / "last")) <= 1e-4
    assert T.load_trainer_state(two / "last")["world_size"] == 2


def test_config_of_saved_checkpoint_reloads(tmp_path):
    T.train(tiny_model(), tiny_source(), config(tmp_path, max_steps=2))
    model = RobertaForSequenceClassification.from_pretrained(tmp_path / "last")
    assert isinstance(model.config, RobertaConfig) and model.config.num_labels == 2


def padded_source(batch_size=4):
    """tiny_source's batches with 3..8 real tokens per row: the unpadded path runs in the model."""

    def make_padded(items, epoch):
        batch = _ns["make_batch"](items, epoch)
        real = torch.arange(8) < torch.tensor([3 + i % 6 for i in items])[:, None]  # (B, 8)
        batch["input_ids"] = batch["input_ids"].masked_fill(~real, 1)
        batch["attention_mask"] = real.long()
        return batch

    return T.ShuffledBatches(64, batch_size, make_padded, seed=0)


def test_compiled_training_matches_eager(tmp_path):
    """compile=True: torch.compile (inductor, graph breaks at the unpadding) gives the same run."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    T.train(tiny_model(0.0), padded_source(), config(eager, max_steps=4))
    T.train(tiny_model(0.0), padded_source(), config(compiled, max_steps=4, compile=True))
    assert losses(compiled) == pytest.approx(losses(eager), abs=1e-5)
    assert max_diff(weights(eager / "last"), weights(compiled / "last")) <= 1e-5
    assert not any(k.startswith("_orig_mod") for k in weights(compiled / "last"))
