"""Running the Snakemake workflow from tests: shared by test_pipeline.py and test_slurm.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_hard(
    argv: list[str], *, cwd: Path, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """Run ``argv`` in its own process group; on timeout kill the whole group (Snakemake and
    the jobs it started), SIGTERM then SIGKILL, and raise ``subprocess.TimeoutExpired``."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if still there after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


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
