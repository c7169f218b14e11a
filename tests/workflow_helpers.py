"""Running the Snakemake workflow from tests: shared by test_pipeline.py and test_slurm.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def start_group(
    argv: list[str], *, cwd: Path, env: dict, log: Path | None = None
) -> subprocess.Popen:
    """Start ``argv`` in its own process group (session), text output piped, or written to
    ``log`` (for a process left running while others go on: a full pipe would block it)."""
    kw = dict(cwd=cwd, env=env, text=True, start_new_session=True)
    if log is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (from start_group); on timeout kill its whole group (Snakemake and the
    jobs it started), SIGTERM then SIGKILL, and raise ``subprocess.TimeoutExpired``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_hard(
    argv: list[str], *, cwd: Path, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """Run ``argv`` in its own process group with a hard timeout (see finish)."""
    return finish(start_group(argv, cwd=cwd, env=env), timeout)


def kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL what is left of it after ``grace`` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never empties
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def snakemake(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    """Run snakemake with ``args`` in ``cwd``; return the CompletedProcess (text output)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    env["PATH"] = f"{env['PATH']}{os.pathsep}{Path(sys.executable).parent}"  # a stub CLI wins
    return run_hard([SNAKEMAKE, *args], cwd=cwd, env=env, timeout=timeout)


def copy_workflow(dest: Path) -> None:
    """The Snakefile, workflow/ and config/ of the repository, copied into dest."""
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    for d in ("workflow", "config"):
        shutil.copytree(REPO / d, dest / d)
