"""Run one stage (train or evaluate) of one run and always write its status file.

Called by the rules in workflow/rules/runs.smk (a `shell:` command: editing this file does not
make Snakemake's code trigger rerun finished trainings); standard library only. The stage's
command runs with its stdout and stderr in the rule's log; the outcome goes to the --status file
as JSON (status ok/failed, failed_stage, returncode, attempt, wall time, the log's last lines
and the run's grid coordinates). A failed stage does not fail the Snakemake job: downstream
stages see the failure in their input status and skip, and the tables mark the run as failed
(see docs/pipeline.md, "Failures").

GPU slots: a job with resources gpu = n > 0 gets CUDA_VISIBLE_DEVICES set to n devices that no
other job of this workflow holds (one lock file per device under .snakemake/gpu_slots); a job
with gpu = 0 sees no GPU.
"""

import argparse
import fcntl
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = Path(".snakemake/gpu_slots")


def visible_gpus() -> list[str]:
    """Device ids this job may use: CUDA_VISIBLE_DEVICES if set (e.g. by SLURM), else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


@contextmanager
def gpu_slots(n: int):
    """Yield the CUDA_VISIBLE_DEVICES value for a job needing ``n`` GPUs, holding their locks."""
    devices = visible_gpus()
    if n == 0 or len(devices) <= n:
        yield ",".join(devices[:n]) if n else ""
        return
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    while True:
        held = [h for h in (_try_lock(d) for d in devices) if h is not None][:n]
        if len(held) == n:
            break
        for _, fh in held:
            fh.close()
        time.sleep(1.0)
    try:
        yield ",".join(d for d, _ in held)
    finally:
        for _, fh in held:
            fh.close()


def _try_lock(device: str):
    """(device, open lock file) if the device's lock was free, else None."""
    fh = open(LOCK_DIR / f"gpu{device}.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return device, fh


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if it is missing)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def upstream_failure(paths: list[str]) -> dict | None:
    """The first failed upstream status among ``paths``, or None if all are ok."""
    for p in paths:
        status = json.loads(Path(p).read_text())
        if status.get("status") != "ok":
            return status
    return None


def execute(cmd: list[str], log: str, gpus: int, threads: int) -> tuple[int, str]:
    """Run ``cmd`` with output to ``log``; return (returncode, CUDA_VISIBLE_DEVICES used)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with gpu_slots(gpus) as visible, open(log, "w") as fh:
        env["CUDA_VISIBLE_DEVICES"] = visible
        fh.write(f"$ {' '.join(cmd)}\n# CUDA_VISIBLE_DEVICES={visible!r}\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        except OSError as err:
            fh.write(f"cannot start the command: {err}\n")
            rc = 127
    return rc, visible


def write_status(path: str, status: dict) -> None:
    """Write ``status`` as JSON, atomically."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options, then ``--`` and the stage's command."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True)
    p.add_argument("--status", required=True, help="status JSON to write")
    p.add_argument("--log", required=True, help="log of the command's stdout and stderr")
    p.add_argument("--upstream", nargs="*", default=[], help="status files of earlier stages")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attempt", type=int, default=1)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--meta", nargs="*", default=[], help="key=value pairs stored in the status")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    args.cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not args.cmd:
        p.error("no command given after --")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the stage described by the command line and record its status."""
    a = parse_args(argv)
    status = {k: int(v) if v.isdigit() else v for k, v in (kv.split("=", 1) for kv in a.meta)}
    status.update(run_dir=a.run_dir, stage=a.stage, attempt=a.attempt, log=a.log)
    failed = upstream_failure(a.upstream)
    start = time.time()
    if failed is not None:
        Path(a.log).write_text(f"skipped: stage {failed['failed_stage']} failed\n")
        status.update(status="failed", failed_stage=failed["failed_stage"], returncode=None)
        status["error"] = failed.get("error") or f"skipped: stage {failed['failed_stage']} failed"
    else:
        rc, visible = execute(a.cmd, a.log, a.gpus, a.threads)
        ok = rc == 0
        status.update(status="ok" if ok else "failed", returncode=rc, cuda_visible=visible)
        status.update(failed_stage=None if ok else a.stage, error="" if ok else log_tail(a.log))
    status.update(wall_s=round(time.time() - start, 3), finished=time.strftime("%FT%T%z"))
    write_status(a.status, status)


if __name__ == "__main__":
    main()
