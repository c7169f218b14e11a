"""Training loop: seeded, device-agnostic, resumable, with EMA, warm-up + cosine lr and logs.

``train(cfg, out_dir)`` writes the run directory (:mod:`madbench.rundir`): ``config.yaml``,
``run_info.json`` (git commit, versions, device, seed, parameter count, wall time, peak
memory, status), ``train.log``, ``history.csv`` (one row per ``log_every`` steps, loss averaged
over them, wall_time = cumulative training seconds), ``probes.csv`` (when ``probe_every`` > 0)
and ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end: model, EMA, optimiser,
lr scheduler, step, elapsed time and every RNG state (data and noise generators, torch
CPU/CUDA). A run started again on a directory with a checkpoint resumes from it (the config
must agree, except the keys in :data:`RESUMABLE_KEYS`); on CPU the result is bit-identical to an
uninterrupted run. Methods without weights (oracle) get config, run_info, train.log and a
``no_weights.txt`` marker, no checkpoint.

Randomness: network init from ``seed`` (CPU RNG, so CPU and CUDA runs start equal); training
data from a generator seeded ``seed`` on the device (synthetic sets are sampled there; earth data
live on the device and batches are seeded index draws from the train split of split
``cfg.split`` with seed ``seed``); times and noise from a second generator seeded ``seed + 1``.

Optimiser: AdamW(lr, weight_decay); lr factor linear from 1/W to 1 over W = min(warmup_steps,
steps // 10) steps, then cosine to ``lr_final_ratio``; gradient norm clipped to ``grad_clip``;
EMA with decay min(ema, (1 + k) / (10 + k)) at step k. A non-finite loss stops the run with
:class:`NonFiniteLossError` naming the step and the method (checked at every log and checkpoint
boundary over every step since the last one; no checkpoint is written after it).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import Tensor
from tqdm import tqdm

import madbench
from madbench._utils import atomic_write, make_generator
from madbench.build import build_run, resolve_device
from madbench.config import ConfigError, TrainConfig, dump_config, load_config
from madbench.data import Dataset
from madbench.methods import Method, get_method
from madbench.metrics import distribution_metrics
from madbench.rundir import (
    DERIVED_DIRS,
    DERIVED_FILES,
    HISTORY_COLUMNS,
    LOG,
    NO_WEIGHTS,
    RUN_FILES,
    TRAINING_FILES,
    RunDir,
    append_row,
    lock,
    read_checkpoint,
    read_json,
    save_checkpoint,
    truncate_rows,
    write_json,
)
from madbench.sampling import sample

#: every file name that marks a directory as a run directory
RUN_FILES_ALL = frozenset(RUN_FILES + DERIVED_FILES + DERIVED_DIRS)
#: config keys that may differ between a checkpoint and the run that resumes it
RESUMABLE_KEYS = (
    "device",
    "tf32",
    "log_every",
    "checkpoint_every",
    "wandb",
    "wandb_project",
    "evaluate",
    "probe_every",
    "probe_n",
    "probe_steps",
    "snapshot_fraction",
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------------- building blocks
class DataStream:
    """Training batches on ``device``, float32 (batch_size, D): seeded index draws from the
    train split moved to the device once (empirical data), or fresh samples (synthetic), drawn
    ``block`` batches at a time (0: 64 on CUDA, 1 on the CPU; see TrainConfig.data_block).

    :meth:`state` and :meth:`restore` carry a block across a checkpoint: the generator state
    at the block's start and the batches used, so a resumed run draws what it would have."""

    def __init__(
        self, dataset: Dataset, batch_size: int, generator: torch.Generator, block: int = 0
    ):
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self.device = generator.device
        self.block = block or (64 if self.device.type == "cuda" else 1)
        self.train: Tensor | None = None
        self.pool: Tensor | None = None
        self.used, self.start = 0, generator.get_state()
        if dataset.empirical:
            split = dataset.split(dataset.split_kind, dataset.split_seed)
            self.train = split["train"].to(self.device, torch.float32)

    def next(self) -> Tensor:
        if self.train is not None:
            idx = torch.randint(
                self.train.shape[0],
                (self.batch_size,),
                generator=self.generator,
                device=self.device,
            )
            return self.train[idx]
        if self.pool is None or self.used == self.block:
            self._draw()
        self.used += 1
        return self.pool[self.used - 1]

    def _draw(self) -> None:
        self.start = self.generator.get_state()
        x = self.dataset.sample(self.block * self.batch_size, generator=self.generator)
        self.pool = x.to(self.device, torch.float32).reshape(self.block, self.batch_size, -1)
        self.used = 0

    def state(self) -> dict[str, Any] | None:
        """The open block (None between blocks, and for empirical data)."""
        if self.pool is None or self.used == self.block:
            return None
        return {"block": self.block, "start": self.start, "used": self.used}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Reopen a block saved by :meth:`state` (the generator is at its end already)."""
        if state is None:
            return
        end = self.generator.get_state()
        self.block = int(state["block"])
        self.generator.set_state(state["start"].cpu())
        self._draw()
        self.used = int(state["used"])
        if not torch.equal(self.generator.get_state(), end):
            raise RuntimeError("checkpoint: the data block does not lead to the saved generator")


def lr_factor(step: int, total: int, warmup: int, final_ratio: float = 0.0) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based) of ``total``.

    Warm-up (step < W): (step + 1) / W; then final + (1 - final) (1 + cos(pi p)) / 2 with
    p = (step - W) / max(1, total - W): 1 at the first post-warm-up step, decreasing to
    ``final_ratio`` at step ``total`` (one past the last optimiser step).
    """
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def effective_warmup(cfg: TrainConfig) -> int:
    return min(cfg.warmup_steps, cfg.steps // 10)


class EMA:
    """Parameter EMA: e <- d e + (1 - d) p with d = min(decay, (1 + k) / (10 + k)) at step k."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, _ in net.named_parameters()]
        self.params = [p for _, p in net.named_parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    def rate(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.rate(step))

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.shadow, strict=True))

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for s, n in zip(self.shadow, self.names, strict=True):
            s.copy_(state[n])


# ---------------------------------------------------------------------- provenance
def git_commit() -> str | None:
    """HEAD commit of the checkout holding this package (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def set_matmul_precision(cfg: TrainConfig, device: torch.device) -> None:
    """TF32 matrix products for training on CUDA when ``cfg.tf32`` (this process only)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def package_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "madbench": madbench.__version__,
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def run_logger(out: Path, echo: bool):
    """Logger writing to out/train.log (and to stderr if ``echo``); handlers removed after."""
    log = logging.getLogger(f"madbench.train.{id(out)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(out / LOG)]
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    try:
        yield log
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


class WandbLogger:
    """Optional wandb run (config ``wandb: true``); offline unless WANDB_MODE says otherwise."""

    def __init__(self, cfg: TrainConfig, out: Path):
        self.run = None
        if not cfg.wandb:
            return
        try:
            import wandb
        except ImportError as e:
            raise ConfigError(
                "config key 'wandb' is true but wandb is not installed (pip install wandb)"
            ) from e
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(
            project=cfg.wandb_project,
            dir=str(out),
            config=cfg.to_dict(),
            name=out.name,
            resume="allow",
        )

    def log(self, row: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


# ---------------------------------------------------------------------- state
@dataclass
class TrainState:
    """Everything a checkpoint restores."""

    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    data_gen: torch.Generator
    noise_gen: torch.Generator
    step: int = 0
    elapsed: float = 0.0
    stream: DataStream | None = None
    #: a checkpoint's open data block, reopened when the stream is made
    data_block: dict[str, Any] | None = None


def make_optimizer(cfg: TrainConfig, net: torch.nn.Module):
    """(AdamW with the config's lr and weight decay, its warm-up and decay LambdaLR)."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = effective_warmup(cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, cfg.steps, warm, cfg.lr_final_ratio)
    )
    return opt, sched


def make_state(cfg: TrainConfig, method: Method, device: torch.device) -> TrainState:
    net = method.net
    assert net is not None
    opt, sched = make_optimizer(cfg, net)
    return TrainState(
        method,
        opt,
        sched,
        EMA(net, cfg.ema),
        make_generator(cfg.seed, device),
        make_generator(cfg.seed + 1, device),
    )


def rng_state(
    data_gen: torch.Generator, noise_gen: torch.Generator, data_block: dict[str, Any] | None
) -> dict[str, Any]:
    """A checkpoint's random state: the run's data and noise generators, the global torch (and
    CUDA) generators, and the open data block (:meth:`DataStream.state`) if any."""
    rng = {"data": data_gen.get_state(), "noise": noise_gen.get_state()}
    rng["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if data_block is not None:
        rng["data_block"] = data_block
    return rng


def restore_generators(
    rng: dict[str, Any], data_gen: torch.Generator, noise_gen: torch.Generator
) -> dict[str, Any] | None:
    """Set a run's generators from a checkpoint's :func:`rng_state`; its open data block."""
    data_gen.set_state(rng["data"].cpu())
    noise_gen.set_state(rng["noise"].cpu())
    return rng.get("data_block")


def restore_global_rng(rng: dict[str, Any]) -> None:
    """Set the global torch (and CUDA) generators from a checkpoint's :func:`rng_state`."""
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def checkpoint_dict(cfg: TrainConfig, st: TrainState) -> dict[str, Any]:
    block = st.stream.state() if st.stream is not None else st.data_block
    rng = rng_state(st.data_gen, st.noise_gen, block)
    return {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "step": st.step,
        "elapsed": st.elapsed,
        "model": st.method.net.state_dict(),
        "ema": st.ema.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "lr_scheduler": st.scheduler.state_dict(),
        "rng": rng,
    }


def restore_state(st: TrainState, ck: dict[str, Any]) -> None:
    """Load a checkpoint dict (from :func:`madbench.rundir.read_checkpoint`) into ``st``."""
    st.method.net.load_state_dict(ck["model"])
    st.ema.load_state_dict(ck["ema"])
    st.optimizer.load_state_dict(ck["optimizer"])
    st.scheduler.load_state_dict(ck["lr_scheduler"])
    st.data_block = restore_generators(ck["rng"], st.data_gen, st.noise_gen)
    restore_global_rng(ck["rng"])
    st.step, st.elapsed = int(ck["step"]), float(ck["elapsed"])


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys (dotted for sections) whose values differ, ignoring :data:`RESUMABLE_KEYS`."""
    out = []
    for k in sorted(set(a) | set(b)):
        if not prefix and k in RESUMABLE_KEYS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


@torch.no_grad()
def probe(st: TrainState, cfg: TrainConfig) -> dict[str, float]:
    """:func:`sample_quality` of the EMA weights now (swapped into the network and out again;
    the probe's generators are its own, so a run with probes ends with the same weights)."""
    net = st.method.net
    live = [p.detach().clone() for p in st.ema.params]
    for p, e in zip(st.ema.params, st.ema.shadow, strict=True):
        p.data.copy_(e)
    net.eval()
    try:
        return sample_quality(st.method, cfg, st.step)
    finally:
        for p, v in zip(st.ema.params, live, strict=True):
            p.data.copy_(v)
        net.train()


@torch.no_grad()
def sample_quality(method: Method, cfg: TrainConfig, step: int) -> dict[str, float]:
    """Distance to M of ``probe_n`` raw samples (the method's default sampler, ``probe_steps``
    steps, a generator seeded by (seed, step)) and the distributional metrics of
    :func:`madbench.metrics.distribution_metrics` of the projected ones against fresh data."""
    dev = method.device
    g = make_generator(1_000_003 * cfg.seed + step, dev)
    s = sample(method, cfg.probe_n, steps=cfg.probe_steps, generator=g)
    ref = method.dataset.sample(cfg.probe_n, generator=make_generator(cfg.seed + 17))
    raw, proj = s["raw"].double().cpu(), s["projected"].double().cpu()
    row = {"dist_mean": float(method.manifold.distance_to_manifold(raw).mean())}
    if torch.isfinite(raw).all():
        row.update(distribution_metrics(method.dataset, proj, ref.double().cpu()))
    return row


def _check_finite(losses: list[Tensor], first_step: int, cfg: TrainConfig) -> list[float]:
    """Losses as floats; NonFiniteLossError naming the first bad step (1-based)."""
    vals = torch.stack(losses).double().cpu().tolist()
    for i, v in enumerate(vals):
        if not math.isfinite(v):
            raise NonFiniteLossError(
                f"non-finite training loss ({v}) at step {first_step + i} of method "
                f"{cfg.method!r} on dataset {cfg.dataset!r} (schedule {cfg.schedule!r}); "
                "try a lower lr or a stronger grad_clip"
            )
    return vals


@dataclass(frozen=True)
class Due:
    """What the end of a step does: a log boundary (loss checks, history row) when any of the
    others is due, a probe, a checkpoint, the snapshot."""

    log: bool
    probe: bool
    checkpoint: bool
    snapshot: bool


def due_at(cfg: TrainConfig, step: int) -> Due:
    """The cadence of a run (alone or in a stack) after ``step`` steps."""
    end = step == cfg.steps
    probe = cfg.probe_every > 0 and (step % cfg.probe_every == 0 or end)
    checkpoint = step % cfg.checkpoint_every == 0 or end
    snapshot = step == snapshot_step(cfg)
    log = step % cfg.log_every == 0 or end or probe or checkpoint or snapshot
    return Due(log, probe, checkpoint, snapshot)


def snapshot_step(cfg: TrainConfig) -> int | None:
    """The step whose checkpoint is kept as snapshot.pt (None without ``snapshot_fraction``)."""
    if cfg.snapshot_fraction <= 0:
        return None
    return max(1, round(cfg.snapshot_fraction * cfg.steps))


def _check_finite_parameters(st: TrainState, cfg: TrainConfig) -> None:
    """NonFiniteLossError when an update (the last one included, which no loss has seen yet)
    left a parameter NaN or infinite."""
    params = list(st.method.net.parameters())
    if not bool(torch.stack([p.isfinite().all() for p in params]).all()):
        raise NonFiniteLossError(
            f"non-finite network parameters after step {st.step} of method {cfg.method!r} on "
            f"dataset {cfg.dataset!r} (schedule {cfg.schedule!r}); try a lower lr or a "
            "stronger grad_clip"
        )


# ---------------------------------------------------------------------- the run
def _start_or_resume(cfg: TrainConfig, run: RunDir, overwrite: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a fresh start (whose stale files are removed).

    A directory that holds another run (its config.yaml or checkpoint differs in a key that
    changes the result, or run files without a config) is refused unless ``overwrite``, which
    removes every file derived from a config first."""
    if overwrite:
        _remove(run, DERIVED_FILES)
        for name in DERIVED_DIRS:
            shutil.rmtree(run / name, ignore_errors=True)
        return None
    ck = read_checkpoint(run.checkpoint, "cpu") if run.checkpoint.exists() else None
    other = _other_run(cfg, run, ck)
    if other:
        present = ", ".join(sorted(p.name for p in run.path.iterdir() if p.name in RUN_FILES_ALL))
        raise ConfigError(
            f"{run.path} holds another run ({other}; files: {present}); use another --out "
            "directory, or --overwrite to remove them"
        )
    if ck is None:  # a fresh start: nothing trained before may stay beside it
        _remove(run, TRAINING_FILES if not cfg_is_trainable(cfg) else DERIVED_FILES)
    return ck


def _other_run(cfg: TrainConfig, run: RunDir, ck: dict[str, Any] | None) -> str | None:
    """Why ``run`` (with checkpoint ``ck``) holds another run than ``cfg`` (None if it is the
    same run, or empty). Configs are compared as this version reads them (moved keys, new
    keys at their defaults) in the keys that change the result."""
    sources = [("config.yaml", run.config)] if run.config.exists() else []
    sources += [("the checkpoint", ck["config"])] if ck is not None else []
    for label, source in sources:
        try:
            other = load_config(source) if label == "config.yaml" else TrainConfig.from_dict(source)
        except ConfigError as e:
            return f"{label} cannot be read: {e}"
        diff = config_differences(other.to_dict(), cfg.to_dict())
        if diff:
            return f"{label} differs in {', '.join(diff)}"
    if not run.config.exists() and any((run / n).exists() for n in DERIVED_FILES):
        return "run files without a config.yaml"
    return None


def cfg_is_trainable(cfg: TrainConfig) -> bool:
    return get_method(cfg.method).trainable


def _remove(run: RunDir, names: tuple[str, ...]) -> None:
    for name in names:
        (run / name).unlink(missing_ok=True)


def _run_info(cfg: TrainConfig, method: Method, device: torch.device, **extra: Any) -> dict:
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "schedule": cfg.schedule,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "n_parameters": method.n_parameters,
        "trainable": method.trainable,
        "schedule_repr": repr(method.schedule),
        **extra,
    }


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` in ``out_dir``; returns a summary dict.

    ``progress``: tqdm bar (default: when stderr is a terminal; otherwise plain log lines on
    stderr). ``stop_after``: return after that many total steps without a final checkpoint,
    as a killed run would (for resume tests). The run directory is locked while training
    (a second process on it is refused with RunLockedError), and nothing is created before
    the config, the device and the method are known to be good.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    set_matmul_precision(cfg, device)
    method = build_run(cfg, device)
    run = RunDir(out_dir)
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--out {run.path} is a file, not a run directory")
    with lock(run.path, exclusive=True, what=f"madbench train {cfg.method} on {cfg.dataset}"):
        ck = _start_or_resume(cfg, run, overwrite)
        dump_config(cfg, run.config)
        tty = sys.stderr.isatty() if progress is None else progress
        with run_logger(run.path, echo=not tty) as log:
            log.info(
                f"madbench train: method {cfg.method} dataset {cfg.dataset} schedule "
                f"{method.schedule!r} seed {cfg.seed} device {device} ({device_name(device)})"
            )
            log.info(f"score network: {method.n_parameters:,} parameters")
            if tty:
                print(f"{cfg.method}: {method.n_parameters:,} parameters", file=sys.stderr)
            if not method.trainable:
                return _no_weights(cfg, method, device, run, log)
            if ck is not None and int(ck["step"]) == cfg.steps:
                return _already_done(cfg, method, device, run, log)
            return _train_weights(cfg, method, device, run, ck, log, tty, stop_after)


def _already_done(cfg: TrainConfig, method: Method, device, run: RunDir, log) -> dict[str, Any]:
    """A rerun of a finished run: nothing to train; run_info says complete (a kill between the
    last checkpoint and the status write left it at running)."""
    log.info(f"{run.checkpoint} is already at step {cfg.steps}: nothing to do")
    info = read_json(run.run_info) or _run_info(cfg, method, device)
    if info.get("status") != "complete":
        write_json(run.run_info, {**info, "status": "complete"})
    return {"step": cfg.steps, "n_parameters": method.n_parameters, "out": str(run.path)}


def _train_weights(cfg, method, device, run: RunDir, ck, log, tty, stop_after) -> dict[str, Any]:
    """Resume from ``ck`` (if any), run the loop, write run_info before and after (status
    failed, with the error, when the loop raises; the error also goes to train.log)."""
    st = make_state(cfg, method, device)
    if ck is not None:
        restore_state(st, ck)
        log.info(f"resumed from {run.checkpoint} at step {st.step}")
        truncate_rows(run.history, st.step)
        truncate_rows(run.probes, st.step)
    info = _run_info(cfg, method, device, resumed_from=st.step if ck else None)
    write_json(run.run_info, {**info, "status": "running"})
    wb = WandbLogger(cfg, run.path)
    try:
        summary = _loop(cfg, st, run, log, tty, stop_after, wb)
    except Exception as e:
        log.error(f"training failed at step {st.step}: {type(e).__name__}: {e}")
        write_json(run.run_info, {**info, "status": "failed", "error": str(e), "step": st.step})
        raise
    finally:
        wb.finish()
    info.update(
        summary,
        status="complete" if st.step == cfg.steps else "interrupted",
        train_wall_time_s=st.elapsed,
        peak_memory_mb=peak_memory_mb(device),
    )
    write_json(run.run_info, info)
    return {**summary, "n_parameters": method.n_parameters, "out": str(run.path)}


def _no_weights(cfg: TrainConfig, method: Method, device: torch.device, run: RunDir, log) -> dict:
    """Run directory of a method without weights: marker file, run_info, no checkpoint."""
    text = f"method {cfg.method!r} is not trainable (it uses the dataset's exact score)\n"
    atomic_write(run / NO_WEIGHTS, lambda p: p.write_text(text))
    write_json(
        run.run_info,
        {**_run_info(cfg, method, device), "status": "complete", "train_wall_time_s": 0.0},
    )
    log.info(text.strip() + "; no weights written")
    return {"step": 0, "n_parameters": 0, "out": str(run.path)}


def optimisation_step(
    method: Method,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    generator: torch.Generator,
    params: list[torch.nn.Parameter],
    grad_clip: float,
) -> Tensor:
    """One step: loss on x0, backward, clip the gradient norm, optimiser step; the loss."""
    loss = method.loss(x0, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()


def _loop(cfg, st: TrainState, run: RunDir, log, tty: bool, stop_after, wb) -> dict[str, Any]:
    """The optimisation steps from st.step to cfg.steps (or ``stop_after``)."""
    net = st.method.net
    params = list(net.parameters())
    stream = st.stream = DataStream(st.method.dataset, cfg.batch_size, st.data_gen, cfg.data_block)
    stream.restore(st.data_block)
    bar = tqdm(total=cfg.steps, initial=st.step, disable=not tty, dynamic_ncols=True)
    window = _Window(st.step, time.perf_counter())
    net.train()
    while st.step < cfg.steps and (stop_after is None or st.step < stop_after):
        loss = optimisation_step(
            st.method, st.optimizer, stream.next(), st.noise_gen, params, cfg.grad_clip
        )
        st.scheduler.step()
        st.ema.update(st.step)
        st.step += 1
        window.losses.append(loss)
        bar.update(1)
        due = due_at(cfg, st.step)
        if due.log:
            _boundary(cfg, st, run, window, due, log, bar, wb)
    bar.close()
    if st.step == cfg.steps and not run.checkpoint.exists():
        save_checkpoint(run.checkpoint, checkpoint_dict(cfg, st))  # steps == 0
    steps_per_s = st.step / st.elapsed if st.elapsed > 0 else float("nan")
    return {"step": st.step, "final_loss": window.last, "steps_per_s": steps_per_s}


@dataclass
class _Window:
    """The steps since the last log boundary: their losses, first step and start time."""

    step: int
    time: float
    losses: list[Tensor] = field(default_factory=list)
    last: float = float("nan")  # mean loss of the previous window


def _boundary(cfg, st: TrainState, run: RunDir, w: _Window, due: Due, log, bar, wb) -> None:
    """At a log, probe or checkpoint step: check the losses, append history (and probes),
    save the checkpoint when due, and open a new window."""
    now = time.perf_counter()
    st.elapsed += now - w.time
    vals = _check_finite(w.losses, st.step - len(w.losses) + 1, cfg)
    _check_finite_parameters(st, cfg)
    w.last = sum(vals) / len(vals)
    sps = (st.step - w.step) / max(now - w.time, 1e-9)
    lr = st.optimizer.param_groups[0]["lr"]
    row = {"step": st.step, "loss": w.last, "lr": lr, "steps_per_s": sps, "wall_time": st.elapsed}
    append_row(run.history, row, HISTORY_COLUMNS)
    wb.log(row)
    bar.set_postfix(loss=f"{w.last:.4g}", it_s=f"{sps:.1f}")
    log.info(f"step {st.step}/{cfg.steps} loss {w.last:.5g} lr {lr:.3g} {sps:.1f} steps/s")
    if due.probe:  # outside the timed region: wall_time stays training time
        t_probe = time.perf_counter()
        pr = probe(st, cfg)
        pr["probe_time_s"] = time.perf_counter() - t_probe
        append_row(run.probes, {"step": st.step, "wall_time": st.elapsed, **pr})
        log.info(f"probe at step {st.step}: distance to M {pr['dist_mean']:.3g}")
    if due.checkpoint:
        save_checkpoint(run.checkpoint, checkpoint_dict(cfg, st))
    if due.snapshot:
        save_checkpoint(run.snapshot, checkpoint_dict(cfg, st))
        log.info(f"snapshot at step {st.step} (for the convergence check): {run.snapshot}")
    w.losses, w.step, w.time = [], st.step, time.perf_counter()
