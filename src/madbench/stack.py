"""Many runs trained as one stacked model: one network call and one optimiser step per step.

The runs of a stack (``madbench train-stack``; the pipeline forms them with ``train.stack``)
share everything that shapes the step (network, batch, steps, optimiser, learning rate
schedule, EMA, checkpoint and log cadence) and may differ in seed, method (and its parameters),
schedule and dataset of one ambient dimension. Per step every member draws its own batch and
noise from its own generators (:meth:`Method.loss_draws`); the members of one method,
schedule and manifold compute their network inputs and their examples' losses as one batch
(:meth:`Method.loss_inputs_from`, :meth:`Method.example_losses`); the K network inputs go
through one :class:`~madbench.nets.StackedMLP`; and one AdamW step updates the stacked
parameters with each member's gradient clipped to its own norm. Adam and the EMA act
elementwise, so a member follows its solo trajectory up to floating-point summation order
(tests/test_stack.py measures it).

What a user sees does not change: every member keeps its own run directory, written as
:mod:`madbench.training` writes it (config, run_info, history, probes, train.log, and a
checkpoint in the solo format, so the run loads, evaluates and even resumes alone). A member
whose loss or parameters turn non-finite is marked failed and dropped; the others go on.
Checkpoints of a stack are written in two phases (every member's ``checkpoint.pt.next``, a
journal in the stack directory, then the renames), so a stack killed anywhere resumes with all
members at one step, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from madbench._utils import make_generator
from madbench.build import build_run, resolve_device
from madbench.config import ConfigError, TrainConfig, dump_config
from madbench.methods import Method
from madbench.nets import StackedMLP
from madbench.rundir import (
    CHECKPOINT,
    HISTORY_COLUMNS,
    SNAPSHOT,
    RunDir,
    append_row,
    lock,
    read_json,
    save_checkpoint,
    truncate_rows,
    write_json,
)
from madbench.training import (
    EMA,
    DataStream,
    Due,
    NonFiniteLossError,
    _run_info,
    _start_or_resume,
    due_at,
    make_optimizer,
    peak_memory_mb,
    restore_generators,
    restore_global_rng,
    rng_state,
    run_logger,
    sample_quality,
    set_matmul_precision,
)

#: config keys that may differ between the members of a stack
MEMBER_KEYS = frozenset(
    {"dataset", "method", "method_params", "schedule", "schedule_params", "seed", "split"}
    | {"evaluate"}
)
JOURNAL = "commit.json"
NEXT = CHECKPOINT + ".next"


def check_stackable(cfgs: list[TrainConfig]) -> None:
    """ConfigError unless the configs differ only in :data:`MEMBER_KEYS` (and their datasets
    share one ambient dimension); wandb is per run and not supported in a stack."""
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        diff = [k for k, v in cfg.to_dict().items() if k not in MEMBER_KEYS and v != first[k]]
        if diff:
            raise ConfigError(
                f"runs of one stack must share config keys {', '.join(diff)} "
                f"({cfgs[0].dataset}/{cfgs[0].method} vs {cfg.dataset}/{cfg.method})"
            )
    if any(cfg.wandb for cfg in cfgs):
        raise ConfigError("config key 'wandb' is not supported in a stack (train alone)")


@dataclass
class Member:
    """One run of a stack: its config, directory, method (with its own ScoreMLP: the member's
    weights for probes and checkpoints), generators, data stream and logger."""

    cfg: TrainConfig
    run: RunDir
    method: Method
    data_gen: torch.Generator
    noise_gen: torch.Generator
    log: Any
    info: dict[str, Any]
    stream: DataStream | None = None
    data_block: dict[str, Any] | None = None  # a checkpoint's open data block
    losses: list[Tensor] = field(default_factory=list)
    last: float = float("nan")


@dataclass
class Stack:
    """The stacked state: members, network, optimiser, lr schedule, EMA, step, wall time."""

    members: list[Member]
    net: StackedMLP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA
    step: int = 0
    elapsed: float = 0.0
    window: list[Tensor] = field(default_factory=list)  # the (K,) losses since the last log
    #: runs of consecutive members with one loss_group: their draws go through one loss
    #: computation (set by build_stack and drop; members are built in group order)
    groups: list[range] = field(default_factory=list)

    @property
    def cfg(self) -> TrainConfig:
        return self.members[0].cfg


def consecutive_groups(members: list[Member]) -> list[range]:
    """The ranges of consecutive members that share a :func:`loss_group`."""
    keys = [loss_group(m) for m in members]
    starts = [k for k in range(len(keys)) if k == 0 or keys[k] != keys[k - 1]]
    return [range(a, b) for a, b in zip(starts, [*starts[1:], len(keys)], strict=True)]


def loss_group(m: Member) -> tuple:
    """Members whose losses may be computed as one: one method (and parameters), schedule and
    manifold; their datasets may differ (only the data stream sees the dataset)."""
    meth = m.method
    return type(meth).__name__, meth.params, repr(meth.schedule), repr(meth.manifold)


def build_stack(members: list[Member], checkpoints: list[dict | None]) -> Stack:
    """The stacked state of ``members``, from their checkpoints when they resume (all at one
    step) or from their freshly initialised networks."""
    cfg = members[0].cfg
    first = {}
    for k, m in enumerate(members):
        first.setdefault(loss_group(m), k)
    order = sorted(range(len(members)), key=lambda k: first[loss_group(members[k])])
    members, checkpoints = [members[k] for k in order], [checkpoints[k] for k in order]
    if any(c is not None for c in checkpoints):
        for m, ck in zip(members, checkpoints, strict=True):
            m.method.net.load_state_dict(ck["model"])
    net = StackedMLP([m.method.net for m in members])
    opt, sched = make_optimizer(cfg, net)
    ema = EMA(net, cfg.ema)
    stack = Stack(members, net, opt, sched, ema, groups=consecutive_groups(members))
    if checkpoints[0] is not None:
        _restore(stack, checkpoints)
    return stack


def _restore(stack: Stack, cks: list[dict]) -> None:
    """Load the members' checkpoints (one step) into the stacked state."""
    steps = {int(ck["step"]) for ck in cks}
    if len(steps) > 1:
        raise ConfigError(f"the members of a stack are at different steps {sorted(steps)}")
    ema = [torch.stack([ck["ema"][name] for ck in cks]) for name in stack.net.names]
    for shadow, value in zip(stack.ema.shadow, ema, strict=True):
        shadow.copy_(value)
    first = cks[0]["optimizer"]
    state = {
        i: {k: v if k == "step" else torch.stack([ck["optimizer"]["state"][i][k] for ck in cks])
            for k, v in s.items()}
        for i, s in first["state"].items()
    }  # fmt: skip
    stack.optimizer.load_state_dict({"state": state, "param_groups": first["param_groups"]})
    stack.scheduler.load_state_dict(cks[0]["lr_scheduler"])
    for m, ck in zip(stack.members, cks, strict=True):
        m.data_block = restore_generators(ck["rng"], m.data_gen, m.noise_gen)
    restore_global_rng(cks[0]["rng"])
    stack.step, stack.elapsed = next(iter(steps)), float(cks[0]["elapsed"])


def member_checkpoint(stack: Stack, k: int) -> dict[str, Any]:
    """Member k's checkpoint, in the format of a run trained alone."""
    m = stack.members[k]
    opt = stack.optimizer.state_dict()
    state = {
        i: {key: v.clone() if key == "step" else v[k].clone() for key, v in s.items()}
        for i, s in opt["state"].items()
    }
    ema = {n.removeprefix("stacked."): t for n, t in stack.ema.state_dict().items()}
    block = m.stream.state() if m.stream is not None else m.data_block
    rng = rng_state(m.data_gen, m.noise_gen, block)
    return {
        "method": m.cfg.method,
        "config": m.cfg.to_dict(),
        "step": stack.step,
        "elapsed": stack.elapsed,
        "model": stack.net.member_state(k),
        "ema": stack.net.member_state(k, ema),
        "optimizer": {"state": state, "param_groups": opt["param_groups"]},
        "lr_scheduler": stack.scheduler.state_dict(),
        "rng": rng,
    }


# ---------------------------------------------------------------------- checkpoints, two phases
def commit(stack: Stack, stack_dir: Path, name: str = CHECKPOINT) -> None:
    """Write every member's checkpoint ``name`` so that a kill anywhere leaves all members at
    one step: each member's ``name.next``, then the journal, then the renames."""
    for k, m in enumerate(stack.members):
        save_checkpoint(m.run / f"{name}.next", member_checkpoint(stack, k))
    write_json(stack_dir / JOURNAL, {"step": stack.step, "name": name,
                                     "runs": [str(m.run.path) for m in stack.members]})  # fmt: skip
    for m in stack.members:
        os.replace(m.run / f"{name}.next", m.run / name)
    (stack_dir / JOURNAL).unlink()


def recover(stack_dir: Path, runs: list[RunDir]) -> None:
    """Finish or undo a commit that a kill interrupted: with the journal every ``.next`` is
    complete and is renamed (roll forward); without it they are partial and removed."""
    journal = read_json(stack_dir / JOURNAL)
    name = journal["name"] if journal else CHECKPOINT
    for run in runs:
        nxt = run / f"{name}.next"
        if journal and nxt.exists():
            os.replace(nxt, run / name)
        nxt.unlink(missing_ok=True)
        (run / NEXT).unlink(missing_ok=True)
    (stack_dir / JOURNAL).unlink(missing_ok=True)


# ---------------------------------------------------------------------- one step
def stack_step(stack: Stack) -> Tensor:
    """One optimisation step of every member: own batch and draws, one loss computation per
    group of members (:attr:`Stack.groups`), one stacked network call, each member's loss the
    mean of its examples', gradients clipped per member, one AdamW step; the (K,) losses."""
    groups, inputs, contexts = stack.groups, [], []
    for g in groups:
        members = [stack.members[k] for k in g]
        x0 = [m.stream.next() for m in members]
        draws = [m.method.loss_draws(x, m.noise_gen) for m, x in zip(members, x0, strict=True)]
        draws = tuple(_cat(d) for d in zip(*draws, strict=True))  # each draw over the group
        (x, c), ctx = members[0].method.loss_inputs_from(_cat(x0), draws)
        inputs.append((x.reshape(len(g), -1, x.shape[-1]), c.reshape(len(g), -1)))
        contexts.append(ctx)
    dtype = next(stack.net.parameters()).dtype
    out = stack.net(
        torch.cat([x.to(dtype) for x, _ in inputs]), torch.cat([c.to(dtype) for _, c in inputs])
    )
    losses = []
    for g, (x, _), ctx in zip(groups, inputs, contexts, strict=True):
        o = out[g.start : g.stop].reshape(-1, out.shape[-1]).to(x.dtype)
        per_example = stack.members[g.start].method.example_losses(o, ctx)
        losses.append(per_example.reshape(len(g), -1).mean(1))
    losses = torch.cat(losses)
    stack.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()  # member k's parameters see only member k's loss
    clip_members(stack.net, stack.cfg.grad_clip)
    stack.optimizer.step()
    stack.scheduler.step()
    stack.ema.update(stack.step)
    stack.step += 1
    return losses.detach()


def _cat(tensors) -> Tensor:
    """torch.cat, without a copy for one tensor."""
    tensors = list(tensors)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def clip_members(net: nn.Module, max_norm: float) -> None:
    """Clip each member's gradient to norm ``max_norm`` (torch.nn.utils.clip_grad_norm_ per
    member: coefficient max_norm / (norm + 1e-6), at most 1)."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape(-1, *([1] * (g.ndim - 1))))


def member_finite(stack: Stack) -> Tensor:
    """(K,) bool: every parameter of member k is finite."""
    flags = [p.detach().reshape(p.shape[0], -1).isfinite().all(1) for p in stack.net.parameters()]
    return torch.stack(flags).all(0)


def drop(stack: Stack, k: int) -> None:
    """Remove member k from the stacked state (network, optimiser, EMA); the rest go on."""
    keep = [i for i in range(len(stack.members)) if i != k]
    opt, sched = stack.optimizer.state_dict(), stack.scheduler.state_dict()
    ema = [s[keep].clone() for s in stack.ema.shadow]
    for name, p in list(stack.net.stacked.items()):
        stack.net.stacked[name] = nn.Parameter(p.detach()[keep].clone())
    stack.optimizer, stack.scheduler = make_optimizer(stack.cfg, stack.net)
    state = {
        i: {key: v if key == "step" else v[keep] for key, v in s.items()}
        for i, s in opt["state"].items()
    }
    stack.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    stack.scheduler.load_state_dict(sched)
    stack.ema = EMA(stack.net, stack.cfg.ema)
    for shadow, value in zip(stack.ema.shadow, ema, strict=True):
        shadow.copy_(value)
    del stack.members[k]
    stack.groups = consecutive_groups(stack.members)


# ---------------------------------------------------------------------- boundaries
def boundary(stack: Stack, stack_dir: Path, n_steps: int, seconds: float, due: Due) -> None:
    """At a log step: every member's finiteness (a failing member is marked and dropped),
    history rows, probes; the checkpoints (two phases) and the snapshot when due."""
    losses = torch.stack(stack.window).double().cpu()  # (n_steps, K)
    stack.window = []
    finite = member_finite(stack).cpu()
    sps, lr = n_steps / max(seconds, 1e-9), stack.optimizer.param_groups[0]["lr"]
    for k in reversed(range(len(stack.members))):
        m = stack.members[k]
        if not (torch.isfinite(losses[:, k]).all() and finite[k]):
            fail(stack, k, f"non-finite training loss or parameters by step {stack.step}")
            continue
        m.last = float(losses[:, k].mean())
        row = dict(step=stack.step, loss=m.last, lr=lr, steps_per_s=sps, wall_time=stack.elapsed)
        append_row(m.run.history, row, HISTORY_COLUMNS)
        m.log.info(f"step {stack.step}/{m.cfg.steps} loss {m.last:.5g} lr {lr:.3g} {sps:.1f} "
                   f"steps/s (stack of {len(stack.members)})")  # fmt: skip
    if due.probe:
        probe_members(stack)
    if stack.members and due.checkpoint:
        commit(stack, stack_dir)
    if stack.members and due.snapshot:
        commit(stack, stack_dir, SNAPSHOT)


def probe_members(stack: Stack) -> None:
    """Every member's sample quality with its EMA weights (loaded into its own network)."""
    ema = {n.removeprefix("stacked."): t for n, t in stack.ema.state_dict().items()}
    for k, m in enumerate(stack.members):
        m.method.net.load_state_dict(stack.net.member_state(k, ema))
        t0 = time.perf_counter()
        row = sample_quality(m.method, m.cfg, stack.step)
        row["probe_time_s"] = time.perf_counter() - t0
        append_row(m.run.probes, {"step": stack.step, "wall_time": stack.elapsed, **row})


def fail(stack: Stack, k: int, reason: str) -> None:
    """Mark member k failed (run_info, train.log) and drop it from the stack."""
    m = stack.members[k]
    err = NonFiniteLossError(
        f"{reason} of method {m.cfg.method!r} on dataset {m.cfg.dataset!r} (schedule "
        f"{m.cfg.schedule!r}) in a stack; try a lower lr or a stronger grad_clip"
    )
    m.log.error(f"training failed at step {stack.step}: NonFiniteLossError: {err}")
    write_json(
        m.run.run_info, {**m.info, "status": "failed", "error": str(err), "step": stack.step}
    )
    print(f"madbench train-stack: {m.run.path}: failed: {err}", file=sys.stderr)
    drop(stack, k)


# ---------------------------------------------------------------------- the driver
def train_stack(
    cfgs: list[TrainConfig],
    outs: list[str | Path],
    stack_dir: str | Path,
    *,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume) the runs ``cfgs`` into ``outs`` as one stack; returns their summaries.

    ``stack_dir`` holds the stack's commit journal. Every run directory is locked while the
    stack trains; runs already finished are left as they are. ``stop_after``: return after that
    many steps without a final checkpoint, as a killed stack would (for resume tests).
    """
    for cfg in cfgs:
        cfg.validate()
    check_stackable(cfgs)
    device = resolve_device(cfgs[0].device)
    set_matmul_precision(cfgs[0], device)
    methods = [build_run(cfg, device) for cfg in cfgs]
    untrainable = [m.name for m in methods if not m.trainable]
    if untrainable:
        raise ConfigError(f"methods without weights cannot be stacked: {untrainable}")
    runs, stack_dir = [RunDir(o) for o in outs], Path(stack_dir)
    stack_dir.mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty() if progress is None else progress
    with contextlib.ExitStack() as hold:
        for run, cfg in zip(runs, cfgs, strict=True):
            what = f"madbench train-stack ({cfg.method} on {cfg.dataset})"
            hold.enter_context(lock(run.path, exclusive=True, what=what))
        recover(stack_dir, runs)
        cks = [_start_or_resume(cfg, run, False) for cfg, run in zip(cfgs, runs, strict=True)]
        members = []
        for cfg, run, method, ck in zip(cfgs, runs, methods, cks, strict=True):
            dump_config(cfg, run.config)
            log = hold.enter_context(run_logger(run.path, echo=False))
            members.append(_member(cfg, run, method, log, device, ck))
        todo = [(m, ck) for m, ck in zip(members, cks, strict=True) if m.info.get("todo")]
        if todo:
            _train(build_stack([m for m, _ in todo], [ck for _, ck in todo]), stack_dir, tty,
                   stop_after, device)  # fmt: skip
    return [{"out": str(m.run.path), **read_json(m.run.run_info)} for m in members]


def _member(cfg: TrainConfig, run: RunDir, method: Method, log, device, ck) -> Member:
    """A member of the stack; ``info['todo']`` is False for a run already at its last step."""
    g_data, g_noise = make_generator(cfg.seed, device), make_generator(cfg.seed + 1, device)
    info = _run_info(cfg, method, device, resumed_from=int(ck["step"]) if ck else None)
    m = Member(cfg, run, method, g_data, g_noise, log, info)
    if ck is not None and int(ck["step"]) == cfg.steps:
        log.info(f"{run.checkpoint} is already at step {cfg.steps}: nothing to do")
        return m
    if ck is not None:
        truncate_rows(run.history, int(ck["step"]))
        truncate_rows(run.probes, int(ck["step"]))
    log.info(f"madbench train-stack: method {cfg.method} dataset {cfg.dataset} schedule "
             f"{method.schedule!r} seed {cfg.seed} device {device}")  # fmt: skip
    m.info["todo"] = True
    return m


def _train(stack: Stack, stack_dir: Path, tty: bool, stop_after: int | None, device) -> None:
    """The loop of a stack, with run_info written before and after for every member."""
    cfg = stack.cfg
    for m in stack.members:
        m.stream = DataStream(m.method.dataset, cfg.batch_size, m.data_gen, cfg.data_block)
        m.stream.restore(m.data_block)
        m.info.pop("todo")
        m.info["stack_size"] = len(stack.members)
        write_json(m.run.run_info, {**m.info, "status": "running"})
    bar = tqdm(total=cfg.steps, initial=stack.step, disable=not tty, dynamic_ncols=True)
    mark, t0 = stack.step, time.perf_counter()
    while (
        stack.members and stack.step < cfg.steps and (stop_after is None or stack.step < stop_after)
    ):
        stack.window.append(stack_step(stack))
        bar.update(1)
        due = due_at(cfg, stack.step)
        if due.log:
            now = time.perf_counter()
            stack.elapsed += now - t0
            boundary(stack, stack_dir, stack.step - mark, now - t0, due)
            mark, t0 = stack.step, time.perf_counter()
    bar.close()
    for m in stack.members:
        status = "complete" if stack.step == cfg.steps else "interrupted"
        sps = stack.step / stack.elapsed if stack.elapsed else float("nan")
        m.info.update(step=stack.step, final_loss=m.last, status=status, steps_per_s=sps)
        m.info.update(train_wall_time_s=stack.elapsed, peak_memory_mb=peak_memory_mb(device))
        write_json(m.run.run_info, m.info)
