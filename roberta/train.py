"""The one training loop: MLM pretraining and every fine-tuning task run through `train`.

    source = ShuffledBatches(len(examples), batch_size=32, make_batch=collate, seed=0)
    result = train(model, source, TrainConfig(out_dir="runs/x", max_steps=1000), eval_fn=evaluate)

What it does, and where:
  - AdamW (fused), no weight decay on biases and LayerNorm weights; linear warmup then linear decay to 0
    over the planned steps (`build_optimizer`, `build_scheduler`).
  - Gradient accumulation, gradient clipping, bf16/fp16 autocast where the device supports it;
    `compile=True` runs the training steps through `torch.compile`.
  - Data is random access: micro-batch `i` of epoch `e` is `source.batch(e, i)`. Step `s` uses the
    micro-batches `(s * A + a) * W + r` (A accumulation steps, W ranks, r this rank), so a resumed
    run restarts at the exact batch, and `torchrun` with W ranks sees the same global batch as one
    process with A = W micro-batches (`micro_batch_indices`).
  - `out_dir/last/` and `out_dir/best/` are checkpoints in the HF layout (config.json +
    model.safetensors) plus the trainer state: `trainer_state.json` (step, data position, schedule,
    optimizer settings, the run's TrainConfig, Python/NumPy RNG states) and
    `trainer_state.safetensors` (the optimizer's moments, torch RNG states). Loading them runs no
    code (no pickle); an old `trainer_state.pt` is refused. Each checkpoint is written into a temp
    folder, fsynced and renamed into place (`save_checkpoint`), so a kill or a power loss never
    leaves half of one; a failed write (a full disk) is an OSError naming the folder, and the
    previous checkpoint stays. `last/` is written every `save_every_minutes`, at the end, and on
    SIGINT/SIGTERM (`_StopSignal`: the step finishes, last/ is saved, then the signal goes on to the
    handler that was there before: KeyboardInterrupt for Ctrl-C, exit for SIGTERM by default).
  - `out_dir/metrics.jsonl` (one JSON object per log or eval), `out_dir/metrics.png` (curves) and
    `out_dir/train_config.json` (the settings of the latest start).
  - One run per out_dir (`prepare_out_dir`): a folder holding a previous run is refused unless
    `resume=True` (continue from last/; the settings that shape the run must be the checkpoint's,
    `check_resumable`) or `cfg.overwrite` (delete the previous run's files first). Temp folders of
    interrupted saves are deleted at the next start.
  - `torchrun`: the process group is set up from WORLD_SIZE/RANK (gloo on CPU, nccl on GPU); losses
    and throughput are summed over ranks; only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from roberta.atomic import atomic_file, fsync_dir, fsync_tree, write_text_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # the trainer state's plain values; its tensors are in TENSORS_FILE
TENSORS_FILE = "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"  # a pickle (loading it could run code): refused
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
# What train writes into out_dir, and so what counts as a previous run there (CONFIG_FILE alone does not).
RUN_FILES = ("last", "best", METRICS_FILE, "metrics.png")
# TrainConfig fields a resumed run must share with its checkpoint: they shape the schedule, the data
# order or the update. The rest (max_minutes, eval_every, save_every_minutes, log_every, patience,
# precision, num_workers, compile, progress, out_dir, overwrite) may change between starts;
# grad_accum may change only with the number of processes, keeping the micro-batches per step.
RESUME_MUST_MATCH = (
    "lr",
    "batch_size",
    "max_steps",
    "max_epochs",
    "warmup_ratio",
    "weight_decay",
    "betas",
    "eps",
    "clip_norm",
    "seed",
    "early_stopping_metric",
    "early_stopping_mode",
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
Batch = dict[str, torch.Tensor]


@dataclass
class TrainConfig:
    """Training settings (the model's are in RobertaConfig). Steps count optimizer updates.

    The global batch is batch_size x grad_accum x world size. Training stops at the first of
    max_steps, max_epochs, max_minutes (wall clock) and early stopping; the learning-rate schedule
    is laid over max_steps if set, else over max_epochs epochs.
    """

    out_dir: str
    lr: float = 1e-4
    batch_size: int = 32  # examples per micro-batch, per process
    grad_accum: int = 1
    max_steps: int | None = None
    max_epochs: float | None = None
    max_minutes: float | None = (
        None  # the whole run's wall clock, resumes included; the final eval fits in it
    )
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    clip_norm: float | None = 1.0
    eval_every: int | None = None  # steps; None: at the end of each epoch
    save_every_minutes: float | None = 10.0  # last/; also at the end and on SIGINT/SIGTERM
    log_every: int = 10
    seed: int = 0
    early_stopping_metric: str | None = None  # a key of eval_fn's dict, e.g. "accuracy"
    early_stopping_mode: str = "max"  # "max": higher is better; "min": lower is better
    patience: int | None = None  # evaluations without improvement before stopping
    precision: str = "auto"  # "auto": bf16 on a GPU that has it, else fp32
    num_workers: int = 0  # processes building micro-batches ahead of the step (0: built in the loop)
    compile: bool = False  # torch.compile the model for the training steps (minutes to start, then faster)
    progress: bool = True
    overwrite: bool = False  # delete a previous run in out_dir (last/, best/, metrics) instead of refusing

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set max_steps or max_epochs: the learning-rate schedule needs a length")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.early_stopping_mode not in ("max", "min"):
            raise ValueError(f"early_stopping_mode must be 'max' or 'min', got {self.early_stopping_mode!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        self.betas = tuple(self.betas)


class DataSource(Protocol):
    """Random-access micro-batches: what `train` reads. `len` = micro-batches per epoch."""

    def __len__(self) -> int: ...

    def batch(self, epoch: int, index: int) -> Batch: ...


class ShuffledBatches:
    """Micro-batches over `num_items` examples, in a fresh order each epoch.

    The order of epoch `e` is a permutation seeded by (seed, e); micro-batch `i` holds items
    `order[i * batch_size : (i + 1) * batch_size]` (the last partial batch is dropped) and is
    built by `make_batch(item_indices, epoch)` -> dict of tensors (e.g. input_ids (B, T)).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        make_batch: Callable[[list[int], int], Batch],
        seed: int = 0,
        shuffle: bool = True,
    ):
        if num_items < batch_size:
            raise ValueError(
                f"{num_items} examples cannot fill one batch of {batch_size}; lower the batch size"
            )
        self.num_items, self.batch_size, self.make_batch = num_items, batch_size, make_batch
        self.seed, self.shuffle = seed, shuffle
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_items // self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
                perm = torch.randperm(self.num_items, generator=g)
            else:
                perm = torch.arange(self.num_items)
            self._order = (epoch, perm)
        return self._order[1]

    def batch(self, epoch: int, index: int) -> Batch:
        items = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        return self.make_batch(items.tolist(), epoch)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch, index); distinct tuples give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for p in parts:  # splitmix64 over the parts
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


# ---- distributed ---------------------------------------------------------------------------------


@dataclass
class Dist:
    """This process's place: rank r of `world` processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the `torchrun` process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, device)


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum floats over ranks (identity with one process)."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def micro_batch_indices(step_in_epoch: int, grad_accum: int, d: Dist) -> list[int]:
    """The micro-batches this rank reads for one optimizer step: (s * A + a) * W + rank."""
    return [(step_in_epoch * grad_accum + a) * d.world + d.rank for a in range(grad_accum)]


# ---- optimizer and schedule ----------------------------------------------------------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (all 1-d parameters) get no weight decay.

    The fused kernel (one pass over all parameters) where torch has it for the parameters' device:
    the same update to ~1e-7, and several times faster than the per-tensor loop on a CPU
    (benchmarks/optimizer.py: 0.94 s -> 0.14 s a step for roberta-base on this project's 2 cores)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warmup over warmup_ratio x total_steps, then linear decay to 0 at total_steps."""
    warmup = max(1, round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.max_epochs * steps_per_epoch))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for cfg.precision on this device; None = full fp32."""
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    state: dict[str, Any],
    save_extra: Callable[[Path], None] | None = None,
) -> None:
    """Write model (HF layout) + the trainer state (`save_trainer_state`) into `folder`, atomically.

    Everything goes into a temp folder beside it and is fsynced; then the old folder is renamed
    aside, the new one renamed into place, and the old one deleted. `recover_checkpoint` undoes a
    kill between the two renames, so `folder` is always either the old or the new checkpoint,
    complete. A failed write (OSError, or the RuntimeError torch gives on a full disk) is raised as
    an OSError naming `folder`, and the old checkpoint is left as it was.
    """
    folder = Path(folder)
    plain, tensors = split_tensors(state)  # before writing: a value JSON cannot hold is a bug, not the disk
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        try:
            model.save_pretrained(tmp)
            if save_extra is not None:
                save_extra(tmp)
            save_file(tensors, tmp / TENSORS_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(plain), encoding="utf-8")
            fsync_tree(tmp)
        except (OSError, RuntimeError) as e:
            raise checkpoint_write_error(folder, e) from e
        old = folder.parent / f".{folder.name}.old"
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
        os.rename(tmp, folder)
        fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_write_error(folder: Path, e: BaseException) -> OSError:
    full = isinstance(e, RuntimeError) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    hint = " No space left on the device?" if full else ""
    return OSError(
        f"could not write the checkpoint {folder}: {type(e).__name__}: {e}.{hint} "
        "The previous checkpoint there, if any, is unchanged."
    )


def recover_checkpoint(folder: Path) -> Path | None:
    """`folder` if it holds a checkpoint, after undoing an interrupted save; else None."""
    folder = Path(folder)
    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and ((old / STATE_FILE).exists() or (old / LEGACY_STATE_FILE).exists()):
        os.rename(old, folder)  # killed between the two renames: the old checkpoint is whole
    return folder if (folder / STATE_FILE).exists() else None


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The trainer state saved in `folder`, read from JSON and safetensors only: nothing is unpickled,
    so a crafted run folder can run no code. An old pickled trainer_state.pt is refused."""
    folder = Path(folder)
    if not (folder / STATE_FILE).exists() and (folder / LEGACY_STATE_FILE).exists():
        raise ValueError(
            f"{folder / LEGACY_STATE_FILE} is a trainer state in the old pickle format, which can run "
            "any code when loaded, so it is not loaded. Start the run again (--overwrite), or resume it "
            "with the version of roberta that wrote it if you trust the file."
        )
    plain = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(folder / TENSORS_FILE) if (folder / TENSORS_FILE).exists() else {}
    return join_tensors(plain, tensors)


def split_tensors(obj: Any, key: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(obj as JSON values, its tensors by dotted key). Tensors become {"__tensor__": key}; tuples,
    int-keyed dicts (the optimizer's state) and NumPy arrays (its RNG state) are tagged so that
    `join_tensors` gives them back as they were."""
    tensors: dict[str, torch.Tensor] = {}
    return _plain(obj, key, tensors), tensors


def _plain(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    def sub(k: Any) -> str:
        return f"{key}.{k}" if key else str(k)

    if torch.is_tensor(obj):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_plain(v, sub(i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_plain(v, sub(i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        items = {str(k): _plain(v, sub(k), tensors) for k, v in obj.items()}
        if all(isinstance(k, str) for k in obj):
            return items
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__intkeys__": items}
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"the trainer state cannot hold {type(obj).__name__} (at {key!r})")


def join_tensors(plain: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_tensors`."""
    if isinstance(plain, list):
        return [join_tensors(v, tensors) for v in plain]
    if not isinstance(plain, dict):
        return plain
    if "__tensor__" in plain:
        return tensors[plain["__tensor__"]]
    if "__tuple__" in plain:
        return tuple(join_tensors(v, tensors) for v in plain["__tuple__"])
    if "__ndarray__" in plain:
        return np.array(plain["__ndarray__"], dtype=np.dtype(plain["dtype"]))
    if "__intkeys__" in plain:
        return {int(k): join_tensors(v, tensors) for k, v in plain["__intkeys__"].items()}
    return {k: join_tensors(v, tensors) for k, v in plain.items()}


# ---- the run folder -------------------------------------------------------------------------------


def previous_run(out: Path) -> list[str]:
    """The files of a previous run in `out` (of RUN_FILES)."""
    return [name for name in RUN_FILES if (Path(out) / name).exists()]


def stale_files(out: Path) -> list[Path]:
    """What interrupted writes left in `out`: temp folders of checkpoint saves (.last.tmp-*), the old
    copy of a checkpoint whose new one is in place (.last.old), temp files of metrics and config."""
    out = Path(out)
    patterns = (".last.tmp-*", ".best.tmp-*", ".metrics*.tmp", ".metrics.tmp.png", f".{CONFIG_FILE}.*.tmp")
    found = {path for pattern in patterns for path in out.glob(pattern)}
    for name in ("last", "best"):
        if (out / name).exists() and (out / f".{name}.old").exists():
            found.add(out / f".{name}.old")
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` ready for one run: finish or delete what interrupted writes left, then refuse to mix
    two runs. `resume`: out/last must hold a checkpoint, unless `out` holds no previous run at all
    (then the run starts fresh, with a warning). Else a previous run is refused, or deleted with
    `overwrite` (only the files train writes: RUN_FILES and CONFIG_FILE)."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError("resume continues the run in out_dir and overwrite deletes it: choose one")
    if out.exists():
        for name in ("last", "best"):
            recover_checkpoint(out / name)
        for path in stale_files(out):
            logger.info("deleting %s, left by an interrupted write", path)
            _remove(path)
    previous, last = previous_run(out), out / "last"
    if resume:
        if not ((last / STATE_FILE).exists() or (last / LEGACY_STATE_FILE).exists()):
            if previous:
                raise FileNotFoundError(
                    f"cannot resume: {last} holds no checkpoint, but {out} holds a previous run "
                    f"({', '.join(previous)}). Pass --overwrite (TrainConfig.overwrite=True) to start "
                    "it again, or choose another --out."
                )
            logger.warning("resume: %s holds no previous run, so this one starts fresh", out)
    elif previous:
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(previous)}): pass --resume (train(resume=True)) "
                "to continue it, or --overwrite (TrainConfig.overwrite=True) to delete it and start again"
            )
        logger.warning("overwrite: deleting the previous run in %s (%s)", out, ", ".join(previous))
        for name in (*RUN_FILES, CONFIG_FILE):
            _remove(out / name)
    out.mkdir(parents=True, exist_ok=True)


def check_resumable(
    state: dict[str, Any], cfg: TrainConfig, world: int, steps_per_epoch: int, folder: Path
) -> None:
    """Refuse to continue a checkpoint's `state` under settings that would make it another run: each
    field of RESUME_MUST_MATCH, the micro-batches per step (grad_accum x processes) and the optimizer
    steps per epoch (the data's size: the epoch is step // steps_per_epoch, so it can never go back)."""
    saved, now = state.get("train_config") or {}, dataclasses.asdict(cfg)

    def same(a: Any, b: Any) -> bool:
        return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)

    diffs = [
        f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now"
        for k in RESUME_MUST_MATCH
        if k in saved and not same(saved[k], now[k])
    ]
    saved_world = state.get("world_size", 1)
    if "grad_accum" in saved and saved["grad_accum"] * saved_world != cfg.grad_accum * world:
        diffs.append(
            f"grad_accum x processes: {saved['grad_accum']} x {saved_world} in the checkpoint, "
            f"{cfg.grad_accum} x {world} now"
        )
    saved_steps = state.get("steps_per_epoch")
    if saved_steps is not None and saved_steps != steps_per_epoch:
        diffs.append(
            f"optimizer steps per epoch (the data): {saved_steps} in the checkpoint, {steps_per_epoch} now"
        )
    if diffs:
        raise ValueError(
            f"cannot resume {folder}: these settings differ from the run it continues: {'; '.join(diffs)}. "
            "Resume with the run's settings, or start a new run (--overwrite, or another --out)."
        )


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- metrics ---------------------------------------------------------------------------------------


def append_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop records after `step` (written by a run that was killed before its next checkpoint)."""
    keep = [r for r in read_metrics(out_dir) if r.get("step", 0) <= step]
    write_text_atomic(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in keep))


def _constant(records: list[dict[str, Any]], key: str) -> bool:
    """True if `key` was logged at least twice and never changed (a count, not a curve)."""
    values = [r[key] for r in records if key in r]
    return len(values) > 1 and len(set(values)) == 1


def plot_metrics(out_dir: str | os.PathLike) -> Path | None:
    """Plot every numeric metric against the step into out_dir/metrics.png (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no metrics.png (pip install matplotlib)")
        return None
    records = read_metrics(out_dir)
    keys = sorted(
        {k for r in records for k, v in r.items() if isinstance(v, (int, float))} - {"step", "epoch"}
    )
    keys = [k for k in keys if k not in ("elapsed_s", "tokens") and not _constant(records, k)]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    path = Path(out_dir) / "metrics.png"
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return path


# ---- the loop -------------------------------------------------------------------------------------


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The task models' loss: `model(**batch).loss` (the batch holds the labels)."""
    return model(**batch).loss


def count_tokens(batch: Batch) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


@dataclass
class TrainResult:
    step: int
    epoch: int
    stopped_by: str  # "max_steps" | "max_epochs" | "max_minutes" | "early_stopping" | "interrupted"
    best_metric: float | None
    last_eval: dict[str, float] | None
    elapsed_s: float


class Trainer:
    """Runs `train`. Holds the model, optimizer, schedule and progress counters; small methods."""

    def __init__(
        self,
        model: nn.Module,
        source: DataSource,
        cfg: TrainConfig,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
        save_extra: Callable[[Path], None] | None = None,
    ):
        self.cfg, self.source, self.eval_fn = cfg, source, eval_fn
        self.loss_fn, self.save_extra = loss_fn, save_extra
        self.dist = setup_distributed()
        self.out = Path(cfg.out_dir)
        self.steps_per_epoch = len(source) // (cfg.grad_accum * self.dist.world)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"one optimizer step needs {cfg.grad_accum * self.dist.world} micro-batches "
                f"(grad_accum x processes) but an epoch has {len(source)}; lower grad_accum or batch size"
            )
        self.total_steps = planned_steps(cfg, self.steps_per_epoch)
        seed_everything(cfg.seed)
        self.model = model.to(self.dist.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.warmup_ratio)
        self.amp = autocast_dtype(cfg, self.dist.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp is torch.float16)
        self.ddp = self._wrap(self.model)
        # What the loss function calls: the model (DDP-wrapped under torchrun), compiled on request.
        # Evaluation and checkpoints use the plain model.
        self.forward_model = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.best: float | None = None
        self.bad_evals = 0
        self.last_eval: dict[str, float] | None = None
        self._ahead: Iterator[Batch] | None = None
        self._plotted = time.monotonic()
        self.stop = _StopSignal()  # `train` installs it for the run: SIGINT/SIGTERM set stop.signum

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.world == 1:
            return model
        ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        return {
            "step": self.step,
            "epoch": epoch,
            "step_in_epoch": in_epoch,  # the data position: the next step reads micro_batch_indices(in_epoch)
            "tokens": self.tokens,
            "elapsed_s": self.elapsed(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "world_size": self.dist.world,
            "steps_per_epoch": self.steps_per_epoch,
            "train_config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens, self.elapsed_before = state["step"], state["tokens"], state["elapsed_s"]
        self.best, self.bad_evals = state["best"], state["bad_evals"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and self.scaler.is_enabled():  # empty: saved without fp16 (another precision)
            self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])

    def start(self, resume: bool) -> None:
        """Before `run`: rank 0 readies out_dir (`prepare_out_dir`; every rank stops if it refuses),
        then, with `resume`, every rank loads out_dir/last; rank 0 records the settings."""
        error: BaseException | None = None
        if self.dist.main:
            try:
                prepare_out_dir(self.out, resume, self.cfg.overwrite)
            except (OSError, ValueError) as e:
                error = e
        if all_sum([float(error is not None)], self.dist)[0] > 0:  # also the barrier before reading last/
            raise error or RuntimeError(f"rank 0 refused to train into {self.out}; see its error")
        if resume:
            self.resume()
        if self.dist.main:
            config = {**dataclasses.asdict(self.cfg), "world_size": self.dist.world}
            write_text_atomic(self.out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    def resume(self, folder: str | os.PathLike | None = None) -> bool:
        """Load weights and trainer state from `folder` (default out_dir/last). False if none.

        Nothing is unpickled (`load_trainer_state`); settings that differ from the checkpoint's
        run are refused (`check_resumable`)."""
        folder = Path(folder) if folder else self.out / "last"
        found = recover_checkpoint(folder)
        if found is None:
            if (folder / LEGACY_STATE_FILE).exists():
                load_trainer_state(folder)  # raises: the old pickle format
            return False
        state = load_trainer_state(found)
        check_resumable(state, self.cfg, self.dist.world, self.steps_per_epoch, found)
        self.model.load_hf_state_dict(load_file(found / "model.safetensors"), source=str(found))
        self.load_state_dict(state)
        if self.dist.main:
            truncate_metrics(self.out, self.step)
        logger.info("resumed from %s at step %d", found, self.step)
        return True

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    def save(self, name: str) -> None:
        if self.dist.main:
            save_checkpoint(self.out / name, self.model, self.state_dict(), self.save_extra)

    # -- one step ------------------------------------------------------------------------------

    def micro_batches(self) -> Iterator[tuple[Batch, int]]:
        """This step's micro-batches on the device, each with its token count (counted on the host,
        so that no GPU sync is needed): built here, or taken from the workers."""
        if self._ahead is None:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            batches = (
                self.source.batch(epoch, i)
                for i in micro_batch_indices(in_epoch, self.cfg.grad_accum, self.dist)
            )
        else:
            batches = (next(self._ahead) for _ in range(self.cfg.grad_accum))
        for batch in batches:
            tokens = count_tokens(batch)
            yield (
                {
                    k: v.to(self.dist.device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in batch.items()
                },
                tokens,
            )

    def _start_workers(self) -> None:
        """With cfg.num_workers, worker processes build the micro-batches of the coming steps, in
        order (the same batches as without them: a batch depends only on its (epoch, index))."""
        if self.cfg.num_workers == 0:
            return
        ahead = _Ahead(
            self.source, self.step, self.steps_per_epoch, self.cfg.grad_accum, self.dist, self.total_steps
        )
        methods = torch.multiprocessing.get_all_start_methods()
        loader = torch.utils.data.DataLoader(
            ahead,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            pin_memory=self.dist.device.type == "cuda",
            prefetch_factor=4,
            multiprocessing_context="fork" if "fork" in methods else None,
            generator=torch.Generator(),  # its own seed draw: the global RNG (dropout) stays as it was
        )
        self._ahead = iter(loader)

    def train_step(self) -> tuple[float, int]:
        """One optimizer update over grad_accum micro-batches; returns (mean loss, tokens) summed
        over ranks (the loss is the mean of the micro-batch losses of every rank)."""
        self.ddp.train()
        loss_sum, tokens = 0.0, 0
        for a, (batch, batch_tokens) in enumerate(self.micro_batches()):
            last = a == self.cfg.grad_accum - 1
            sync = nullcontext() if last or self.dist.world == 1 else self.ddp.no_sync()
            with sync, self._autocast():
                loss = self.loss_fn(self.forward_model, batch)
            with sync:
                self.scaler.scale(loss / self.cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
            tokens += batch_tokens
        self._update()
        loss_sum, tokens = all_sum([loss_sum, float(tokens)], self.dist)
        return loss_sum / (self.cfg.grad_accum * self.dist.world), int(tokens)

    def _autocast(self):
        dtype = self.amp or torch.float32
        return torch.autocast(self.dist.device.type, dtype, enabled=self.amp is not None)

    def _update(self) -> None:
        if self.cfg.clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    # -- evaluation, stopping ------------------------------------------------------------------

    def evaluate(self) -> None:
        """Run eval_fn (on every rank: each sees the whole eval set), log it, keep the best."""
        self.model.eval()
        began = time.monotonic()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.eval_fn(self.model).items()}
        self.eval_seconds = time.monotonic() - began  # kept in reserve under max_minutes
        self.last_eval = metrics
        self._log({"eval_" + k: v for k, v in metrics.items()})
        key = self.cfg.early_stopping_metric
        if key is None:
            return
        if key not in metrics:
            raise ValueError(f"early_stopping_metric {key!r} is not among the eval metrics {sorted(metrics)}")
        value = metrics[key] if self.cfg.early_stopping_mode == "max" else -metrics[key]
        if self.best is None or value > self.best:
            self.best, self.bad_evals = value, 0
            self.save("best")
        else:
            self.bad_evals += 1

    def should_eval(self) -> bool:
        if self.eval_fn is None:
            return False
        if self.cfg.eval_every:
            return self.step % self.cfg.eval_every == 0
        return self.step % self.steps_per_epoch == 0

    def stop_reason(self) -> str | None:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs is not None and self.step >= cfg.max_epochs * self.steps_per_epoch:
            return "max_epochs"
        if cfg.patience is not None and self.bad_evals >= cfg.patience:
            return "early_stopping"
        # the final evaluation must fit too: stop when the time left is less than the last one took
        reserve = getattr(self, "eval_seconds", 0.0) if self.eval_fn is not None else 0.0
        out_of_time = cfg.max_minutes is not None and self.elapsed() + reserve >= 60 * cfg.max_minutes
        interrupted = self.stop.signum is not None
        out_of_time, interrupted = all_sum([float(out_of_time), float(interrupted)], self.dist)
        if interrupted > 0:  # a signal on any rank: every rank stops together
            return "interrupted"
        if out_of_time > 0:
            return "max_minutes"
        return None

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            epoch = self.step / self.steps_per_epoch
            append_metrics(self.out, {"step": self.step, "epoch": round(epoch, 4), **record})

    # -- run -------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.started = time.monotonic()
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._start_workers()
        bar = self._progress_bar()
        last_save, window = time.monotonic(), _Window()
        reason = self.stop_reason()
        if reason == "max_minutes" and self.step > 0:  # a resume whose cap the earlier starts used up
            bar.close()
            raise ValueError(
                f"max_minutes ({self.cfg.max_minutes:g}) counts the whole run, resumes included, and this "
                f"run has already trained {self.elapsed() / 60:.1f} minutes: raise --max-minutes to go on"
            )
        while reason is None:
            loss, tokens = self.train_step()
            self.tokens += tokens
            window.add(loss, tokens)
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                self._log_train(window, bar)
            if self.should_eval():
                self.evaluate()
            reason = self.stop_reason()
            if reason is None and self._save_due(last_save):
                self.save("last")
                last_save = time.monotonic()
        bar.close()
        self._ahead = None  # ends the workers
        return self._finish(reason)

    def _finish(self, reason: str) -> TrainResult:
        """The last evaluation (not when interrupted: a SIGTERM leaves little time), last/, the plot."""
        due = self.last_eval is None or not self.should_eval()
        if self.eval_fn is not None and due and reason != "interrupted":
            self.evaluate()
        self.save("last")
        if self.dist.main:
            plot_metrics(self.out)
        epoch = self.step // self.steps_per_epoch
        best = self.best
        if best is not None and self.cfg.early_stopping_mode == "min":
            best = -best
        return TrainResult(self.step, epoch, reason, best, self.last_eval, self.elapsed())

    def _save_due(self, last_save: float) -> bool:
        minutes = self.cfg.save_every_minutes
        return minutes is not None and time.monotonic() - last_save >= 60 * minutes

    def _log_train(self, window: _Window, bar) -> None:
        loss, tps = window.take()
        lr = self.scheduler.get_last_lr()[0]
        self._log(
            {"loss": loss, "lr": lr, "tokens_per_s": tps, "tokens": self.tokens, "elapsed_s": self.elapsed()}
        )
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
        if self.dist.main and time.monotonic() - self._plotted >= 60:  # the PNG: once a minute at most
            plot_metrics(self.out)
            self._plotted = time.monotonic()

    def _progress_bar(self):
        from tqdm.auto import tqdm

        limit = self.total_steps
        if self.cfg.max_epochs is not None and self.cfg.max_steps is None:
            limit = math.ceil(self.cfg.max_epochs * self.steps_per_epoch)
        disable = not (self.cfg.progress and self.dist.main)
        return tqdm(
            total=limit, initial=self.step, desc="train", unit="step", disable=disable, dynamic_ncols=True
        )


class _Ahead(torch.utils.data.Dataset):
    """Item k: this rank's micro-batch k counted from `first_step` (slot k % A of step first_step + k // A)."""

    def __init__(
        self,
        source: DataSource,
        first_step: int,
        steps_per_epoch: int,
        grad_accum: int,
        d: Dist,
        last_step: int,
    ):
        self.source, self.first_step, self.steps_per_epoch = source, first_step, steps_per_epoch
        self.grad_accum, self.dist = grad_accum, d
        self.count = max(0, last_step - first_step) * grad_accum

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> Batch:
        step, slot = divmod(k, self.grad_accum)
        epoch, in_epoch = divmod(self.first_step + step, self.steps_per_epoch)
        return self.source.batch(epoch, micro_batch_indices(in_epoch, self.grad_accum, self.dist)[slot])


class _Window:
    """Mean loss and tokens/s since the last `take`."""

    def __init__(self) -> None:
        self.loss, self.n, self.tokens, self.t0 = 0.0, 0, 0, time.monotonic()

    def add(self, loss: float, tokens: int) -> None:
        self.loss, self.n, self.tokens = self.loss + loss, self.n + 1, self.tokens + tokens

    def take(self) -> tuple[float, float]:
        now = time.monotonic()
        out = (self.loss / max(1, self.n), self.tokens / max(1e-9, now - self.t0))
        self.loss, self.n, self.tokens, self.t0 = 0.0, 0, 0, now
        return out


class _StopSignal:
    """While entered (in the main thread): SIGINT and SIGTERM only set `signum`, and the loop stops
    after its step. A second one restores the previous handlers and goes to them at once;
    `pass_on` hands the first to them after the exit. Forked data workers inherit the handler and
    ignore the signal: the main process ends them."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if handler not in (signal.SIG_IGN, None):  # None: set outside Python; leave it
                    self.previous[sig] = handler
                    signal.signal(sig, self._caught)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _caught(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            return
        if self.signum is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        logger.warning(
            "%s: stopping after this step and saving last/ (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def pass_on(self) -> None:
        if self.signum is not None:
            signal.raise_signal(self.signum)


def train(
    model: nn.Module,
    source: DataSource,
    cfg: TrainConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
    save_extra: Callable[[Path], None] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model` on `source` under `cfg`; see the module docstring.

    Args:
        model: a PretrainedModel (saved with save_pretrained, reloaded by load_hf_state_dict).
        source: random-access micro-batches (`len`, `batch(epoch, index)` -> dict of tensors).
        eval_fn: model -> {"metric": value}; run every cfg.eval_every steps (else each epoch) and
            at the end. Called with the model in eval mode under torch.no_grad().
        loss_fn: (model, batch) -> scalar loss; default `model(**batch).loss`.
        save_extra: writes more files into each checkpoint folder (e.g. the tokenizer).
        resume: continue from out_dir/last (same data position, RNG and schedule); an error if
            out_dir holds a previous run but no last/ checkpoint, or if a setting that shapes the
            run differs from the checkpoint's (`check_resumable`); a fresh start (with a warning)
            if out_dir holds no run. Without it, an out_dir holding a previous run is refused
            unless cfg.overwrite.

    A SIGINT or SIGTERM during the run (main thread only) stops it after the current step; last/ is
    saved, the previous handlers are put back, and the signal is handed to them: by default
    KeyboardInterrupt for SIGINT, the process's end for SIGTERM. A second signal acts at once.
    Signals that were ignored (SIG_IGN) stay ignored.
    """
    trainer = Trainer(model, source, cfg, eval_fn, loss_fn, save_extra)
    trainer.start(resume)
    trainer.stop = _StopSignal()
    with trainer.stop:
        result = trainer.run()
    trainer.stop.pass_on()
    return result
