"""The ``madbench`` command line.

    madbench list methods|datasets|schedules
    madbench train --dataset D --method M --schedule S --seed N --steps K --out RUN_DIR
                   [--device auto|cpu|cuda] [--set key=value ...] [--overwrite]
    madbench train-stack --stack-dir DIR --spec JSON [--device ...]
    madbench sample --run RUN_DIR --n N --out FILE.npz [--sampler NAME] [--steps K] [--seed S]
    madbench evaluate --run RUN_DIR --out FILE.json
    madbench findings [--results results/study] [--out docs/findings]
    madbench rate-separation [ARGS ...]

Exit status: 0 on success; 2 for bad input: a bad name, key or value, an --out that cannot be
written (one line naming it; nothing is done); 1 for a failure while running (non-finite loss,
unreadable or corrupted run directory, a run directory in use by another process, earth data
that cannot be had, a file the system refuses), also one line, with earlier results intact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from madbench.config import ConfigError


class UsageError(Exception):
    """Bad user input: exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="madbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list registered methods, datasets or schedules")
    ls.add_argument("what", choices=["methods", "datasets", "schedules"])
    ls.add_argument("-v", "--verbose", action="store_true", help="one line of detail each")
    _training_parsers(sub)
    _evaluation_parsers(sub)
    sub.add_parser("rate-separation", help="rate-separation experiments", add_help=False)
    return p


def _training_parsers(sub) -> None:
    """madbench train and madbench train-stack."""
    tr = sub.add_parser("train", help="train one run (resumes from RUN_DIR's checkpoint)")
    tr.add_argument("--dataset", required=True)
    tr.add_argument("--method", required=True)
    tr.add_argument("--schedule", default="ve")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--steps", type=int, default=None, help="default: the config default")
    tr.add_argument("--out", required=True, type=Path, help="run directory")
    tr.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. net.width=512, schedule.sigma_max=50",
    )
    tr.add_argument("--overwrite", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="plain log lines, no bar")

    ts = sub.add_parser("train-stack", help="train several runs as one stacked model")
    ts.add_argument("--stack-dir", required=True, type=Path, help="the stack's directory")
    ts.add_argument(
        "--spec",
        required=True,
        help='JSON list of runs: [{"out": DIR, "dataset": D, "method": M, "schedule": S, '
        '"seed": N, "steps": K, "set": ["key=value", ...]}, ...]',
    )
    ts.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    ts.add_argument("--no-progress", action="store_true", help="no bar")


def _evaluation_parsers(sub) -> None:
    """madbench sample, evaluate and findings."""
    sa = sub.add_parser("sample", help="draw samples from a trained run into an .npz")
    sa.add_argument("--run", required=True, type=Path)
    sa.add_argument("--n", required=True, type=int)
    sa.add_argument("--out", required=True, type=Path)
    sa.add_argument("--sampler", default=None, help="sde|ode|pc|ode_adaptive (ambient), grw|ode")
    sa.add_argument("--steps", type=int, default=500)
    sa.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    sa.add_argument("--device", default=None)

    ev = sub.add_parser("evaluate", help="compute the metrics of a run")
    ev.add_argument("--run", required=True, type=Path)
    ev.add_argument("--out", required=True, type=Path)
    ev.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ev.add_argument(
        "--checkpoint",
        default="checkpoint.pt",
        help="the weights to evaluate: checkpoint.pt (the last), or snapshot.pt (kept at "
        "snapshot_fraction of the steps, for the convergence check)",
    )
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an evaluation setting (n_samples, n_nll, likelihood, ...)",
    )

    fi = sub.add_parser("findings", help="write docs/findings from a finished study")
    fi.add_argument("--results", type=Path, default=Path("results/study"))
    fi.add_argument("--out", type=Path, default=Path("docs/findings"))
    fi.add_argument(
        "--command",
        dest="made_by",
        default="make study",
        help="the command that made the results (for provenance)",
    )
    fi.add_argument("--wall-time", type=float, default=None, help="the study's wall time (s)")
    fi.add_argument(
        "--readme",
        type=Path,
        default=Path("README.md"),
        help="README whose headline block (between its findings markers) is updated",
    )


# ---------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> None:
    if args.what == "methods":
        from madbench.methods import get_method, list_methods

        for name in list_methods():
            cls = get_method(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            params = ", ".join(f"method.{k}={v}" for k, v in cls.Params().to_dict().items())
            print(
                f"{name:10s} {doc}" + (f" [{params}]" if params else "") if args.verbose else name
            )
    elif args.what == "datasets":
        from madbench.data import get_dataset, list_datasets

        for name in list_datasets():
            if args.verbose:
                ds = get_dataset(name)
                extra = "exact score" if ds.has_score else "no exact score"
                print(f"{name:24s} {ds.manifold!r:36s} {extra}")
            else:
                print(name)
    else:
        from madbench.schedules import get_schedule, list_schedules

        for name in list_schedules():
            print(f"{name:10s} {get_schedule(name)!r}" if args.verbose else name)


def cmd_train(args: argparse.Namespace) -> None:
    from madbench.config import TrainConfig, apply_overrides
    from madbench.training import train

    cfg = TrainConfig(
        dataset=args.dataset, method=args.method, schedule=args.schedule, seed=args.seed
    )
    if args.steps is not None:
        cfg.steps = args.steps
    if args.device is not None:
        cfg.device = args.device
    cfg = apply_overrides(cfg, args.set)
    _check_writable_dir(args.out)
    progress = False if args.no_progress else None
    summary = train(cfg, args.out, overwrite=args.overwrite, progress=progress)
    print(f"trained {cfg.method} on {cfg.dataset} to step {summary['step']}: {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from madbench._utils import make_generator
    from madbench.evaluate import EvaluationError
    from madbench.runs import load_run
    from madbench.sampling import sample, save_samples

    if args.n < 1 or args.steps < 1:
        raise UsageError(f"--n and --steps must be >= 1, got {args.n} and {args.steps}")
    _check_writable_file(args.out)
    run = load_run(args.run, device=args.device)
    seed = run.cfg.seed if args.seed is None else args.seed
    gen = make_generator(seed, run.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(run.method, args.n, sampler=args.sampler, steps=args.steps, generator=gen)
    wall = time.perf_counter() - t0
    raw, proj = out["raw"].detach().cpu(), out["projected"].detach().cpu()
    if not torch.isfinite(raw).all():
        bad = int((~torch.isfinite(raw)).any(-1).sum())
        raise EvaluationError(
            f"{bad} of {args.n} samples of {args.run} are not finite (diverged weights?); "
            "nothing written"
        )
    dist = run.method.manifold.distance_to_manifold(raw.double())
    save_samples(
        args.out,
        raw=raw,
        projected=proj,
        dist_to_manifold=dist,
        seed=seed,
        steps=args.steps,
        sampler=args.sampler,
        wall_time_s=wall,
    )
    print(
        f"{args.n} samples of {run.method.name} in {wall:.2f} s -> {args.out} "
        f"(mean distance to M before projection {float(dist.mean()):.3g})"
    )


def cmd_train_stack(args: argparse.Namespace) -> None:
    import json

    from madbench.config import SPEC_FIELDS, config_from_spec
    from madbench.stack import train_stack

    try:
        spec = json.loads(args.spec)
        assert isinstance(spec, list) and spec and all(isinstance(r, dict) for r in spec)
    except (ValueError, AssertionError):
        raise UsageError("--spec must be a non-empty JSON list of run objects") from None
    cfgs, outs = [], []
    for i, r in enumerate(spec):
        unknown = set(r) - {"out", "set", *SPEC_FIELDS}
        if unknown or "out" not in r:
            raise UsageError(f"--spec run {i}: needs 'out', unknown keys {sorted(unknown)}")
        device = {} if args.device is None else {"device": args.device}
        cfgs.append(config_from_spec(r, **device))
        outs.append(Path(r["out"]))
        _check_writable_dir(outs[-1])
    progress = False if args.no_progress else None
    done = train_stack(cfgs, outs, args.stack_dir, progress=progress)
    failed = [d["out"] for d in done if d.get("status") == "failed"]
    print(f"trained a stack of {len(done)} runs ({len(failed)} failed): {args.stack_dir}")


def _check_writable_file(path: Path) -> None:
    """UsageError unless ``path`` can be written as a file (before any work is done)."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: directory {parent} is not writable")


def _check_writable_dir(path: Path) -> None:
    """UsageError unless ``path`` is (or can be made) a writable directory."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a run directory")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise UsageError(f"--out {path}: directory {existing} is not writable")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import madbench.evaluate

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()  # typed and checked by EvalSettings
    metrics = madbench.evaluate.main(args.run, args.out, overrides, args.device, args.checkpoint)
    print(f"{len(metrics)} metrics -> {args.out}")


def cmd_findings(args: argparse.Namespace) -> None:
    from madbench.findings import update_readme_headline, write_findings

    if not (args.results / "tables" / "runs.csv").is_file():
        raise UsageError(f"--results {args.results} holds no tables/runs.csv: run the study first")
    write_findings(args.results, args.out, args.made_by, args.wall_time)
    print(f"findings of {args.results} -> {args.out}")
    head = (args.out / "headline.md").read_text()
    if update_readme_headline(args.readme, head):
        print(f"headline table -> {args.readme}")


# ---------------------------------------------------------------------- entry point
def _fail(command: str, msg: str, status: int) -> int:
    print(f"madbench {command}: error: {msg}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["rate-separation"]:
        from madbench.rate_separation import cli as rate_separation_cli

        return int(rate_separation_cli.main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    commands = {
        "list": cmd_list,
        "train": cmd_train,
        "train-stack": cmd_train_stack,
        "sample": cmd_sample,
        "evaluate": cmd_evaluate,
        "findings": cmd_findings,
    }
    from madbench.data.earth import EarthDataError
    from madbench.evaluate import EvaluationError
    from madbench.rundir import RunLoadError, RunLockedError
    from madbench.training import NonFiniteLossError

    try:
        commands[args.command](args)
    except KeyError as e:  # registry lookups: "unknown method 'x'; known methods: ..."
        msg = e.args[0] if e.args else ""
        if not (isinstance(msg, str) and msg.startswith("unknown ")):
            raise
        return _fail(args.command, msg, 2)
    except (ConfigError, UsageError) as e:
        return _fail(args.command, str(e), 2)
    except (RunLoadError, RunLockedError, NonFiniteLossError, EvaluationError) as e:
        return _fail(args.command, str(e), 1)
    except EarthDataError as e:
        return _fail(args.command, f"earth data: {e}", 1)
    except OSError as e:  # a file or directory the system refuses (permissions, disk full, ...)
        return _fail(args.command, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
