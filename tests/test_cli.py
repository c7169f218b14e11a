"""The madbench command line: list, train, sample, evaluate, rate-separation, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from madbench.cli import main

TINY = [
    "--set",
    "net.width=16",
    "--set",
    "net.depth=2",
    "--set",
    "batch_size=32",
    "--device",
    "cpu",
    "--no-progress",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "what, expected",
    [
        ("methods", {"dsm", "mad", "rsgm", "oracle"}),
        ("schedules", {"ve", "vp", "vp_cosine"}),
        ("datasets", {"toy", "s2_vmf_mixture_4", "so3_mf_mixture_3"}),
    ],
)
def test_list(capsys, what, expected):
    rc, out, _ = run_cli(capsys, "list", what)
    assert rc == 0 and expected <= set(out.split())


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "toy", "--method", "dsn"], "known methods: dsm, mad, oracle, rsgm"),
        (["--dataset", "toyy", "--method", "dsm"], "known datasets:"),
        (["--dataset", "toy", "--method", "dsm", "--schedule", "vee"], "known schedules:"),
        (["--dataset", "toy", "--method", "rsgm"], "Riemannian manifold"),
        (["--dataset", "toy", "--method", "dsm", "--set", "net.widht=3"], "'net.widht'"),
        (["--dataset", "toy", "--method", "dsm", "--set", "lr=fast"], "'lr'"),
    ],
)
def test_bad_names_exit_2_with_the_known_ones(capsys, tmp_path, argv, needle):
    rc, _, err = run_cli(capsys, "train", *argv, "--out", str(tmp_path / "r"), *TINY)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("{}", "--spec must be a non-empty JSON list"),
        ("[{", "--spec must be a non-empty JSON list"),
        ('[{"dataset": "toy"}]', "--spec run 0: needs 'out'"),
        ('[{"out": "R", "datset": "toy"}]', "unknown keys ['datset']"),
        ('[{"out": "R", "dataset": "toy", "method": "oracle"}]', "cannot be stacked"),
        ('[{"out": "R"}, {"out": "S", "set": ["lr=0.1"]}]', "share config keys lr"),
    ],
)
def test_train_stack_rejects_a_bad_spec_with_one_line(capsys, tmp_path, spec, needle):
    rc, _, err = run_cli(capsys, "train-stack", "--stack-dir", str(tmp_path / "s"), "--spec",
                         spec.replace('"R"', json.dumps(str(tmp_path / "r"))))  # fmt: skip
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_findings_from_a_study_and_the_readme_block(capsys, tmp_path):
    """madbench findings as make study calls it (its --command once clobbered the subcommand)."""
    from test_findings import fake_study

    from madbench.findings import HEADLINE_END, HEADLINE_START

    results = fake_study(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"{HEADLINE_START}\n{HEADLINE_END}\n")
    rc, out, err = run_cli(capsys, "findings", "--results", str(results), "--out",
                           str(tmp_path / "f"), "--command", "make study", "--wall-time", "60",
                           "--readme", str(readme))  # fmt: skip
    assert rc == 0, err
    assert json.loads((tmp_path / "f" / "provenance.json").read_text())["command"] == "make study"
    assert (tmp_path / "f" / "headline.md").read_text().strip() in readme.read_text()
    rc, _, err = run_cli(capsys, "findings", "--results", str(tmp_path / "none"))
    assert rc == 2 and "holds no tables/runs.csv" in err


def test_train_then_sample(capsys, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "s2_vmf_mixture_4",
        "--method",
        "mad",
        "--schedule",
        "vp",
        "--seed",
        "2",
        "--steps",
        "30",
        "--out",
        str(run),
        "--set",
        "schedule.beta_max=10",
        *TINY,
    )
    assert rc == 0, err
    assert "parameters" in err and "step 30/30" in err
    for name in ("config.yaml", "run_info.json", "history.csv", "train.log", "checkpoint.pt"):
        assert (run / name).is_file()
    rc, _, err = run_cli(
        capsys,
        "sample",
        "--run",
        str(run),
        "--n",
        "50",
        "--out",
        str(run / "s.npz"),
        "--steps",
        "20",
        "--sampler",
        "ode",
    )
    assert rc == 0, err
    with np.load(run / "s.npz") as z:
        raw, proj = z["raw"], z["projected"]
        assert raw.shape == proj.shape == (50, 3) and int(z["seed"]) == 2
        np.testing.assert_allclose(np.linalg.norm(proj, axis=1), 1, atol=1e-6)
        np.testing.assert_allclose(
            z["dist_to_manifold"], np.abs(np.linalg.norm(raw, axis=1) - 1), atol=1e-6
        )
    # same seed -> same samples
    run_cli(
        capsys,
        "sample",
        "--run",
        str(run),
        "--n",
        "50",
        "--out",
        str(run / "t.npz"),
        "--steps",
        "20",
        "--sampler",
        "ode",
    )
    with np.load(run / "s.npz") as a, np.load(run / "t.npz") as b:
        assert np.array_equal(a["raw"], b["raw"])


def test_oracle_run_has_no_weights_and_samples(capsys, tmp_path):
    run = tmp_path / "oracle"
    rc, _, err = run_cli(
        capsys, "train", "--dataset", "toy", "--method", "oracle", "--out", str(run), *TINY
    )
    assert rc == 0, err
    assert (run / "no_weights.txt").is_file() and not (run / "checkpoint.pt").exists()
    rc, _, err = run_cli(
        capsys,
        "sample",
        "--run",
        str(run),
        "--n",
        "400",
        "--out",
        str(run / "s.npz"),
        "--steps",
        "100",
    )
    assert rc == 0, err
    with np.load(run / "s.npz") as z:
        right = (z["projected"][:, 0] > 0).mean()
    # toy: p(+1) = 0.9; 400 draws give a standard error of 0.015
    assert abs(right - 0.9) < 0.06


def test_sample_on_a_broken_run_exits_1_naming_the_file(capsys, tmp_path):
    run = tmp_path / "run"
    assert (
        run_cli(
            capsys,
            "train",
            "--dataset",
            "toy",
            "--method",
            "dsm",
            "--steps",
            "5",
            "--out",
            str(run),
            *TINY,
        )[0]
        == 0
    )
    (run / "checkpoint.pt").write_bytes(b"garbage")
    rc, _, err = run_cli(
        capsys, "sample", "--run", str(run), "--n", "5", "--out", str(run / "s.npz")
    )
    assert rc == 1 and "checkpoint.pt" in err and not (run / "s.npz").exists()


def test_evaluate_and_rate_separation_are_delegated(monkeypatch, capsys, tmp_path):
    import madbench.evaluate
    import madbench.rate_separation.cli

    seen = {}
    monkeypatch.setattr(
        madbench.evaluate,
        "main",
        lambda r, o, ov, dev, ck: seen.update(ev=(r, o, ov, dev, ck)) or {},
    )
    monkeypatch.setattr(madbench.rate_separation.cli, "main", lambda a: seen.update(rs=a) or 0)
    assert run_cli(capsys, "evaluate", "--run", str(tmp_path), "--out", "m.json")[0] == 0
    assert seen["ev"] == (tmp_path, Path("m.json"), {}, None, "checkpoint.pt")
    argv = ["evaluate", "--run", str(tmp_path), "--out", "m.json", "--set", "rtol=1.0e-4"]
    assert run_cli(capsys, *argv, "--device", "cpu")[0] == 0
    assert seen["ev"] == (tmp_path, Path("m.json"), {"rtol": "1.0e-4"}, "cpu", "checkpoint.pt")
    assert run_cli(capsys, *argv[:-2], "--set", "rtol")[0] == 2  # not KEY=VALUE
    assert run_cli(capsys, "rate-separation", "--quick", "x")[0] == 0
    assert seen["rs"] == ["--quick", "x"]


def _console_script() -> str:
    exe = Path(sys.executable).with_name("madbench")
    return str(exe) if exe.exists() else shutil.which("madbench") or "madbench"


def test_console_script_entry_point():
    r = subprocess.run(
        [_console_script(), "list", "methods"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.split() == ["dsm", "mad", "oracle", "rsgm"]
    r = subprocess.run(
        [_console_script(), "list", "metods"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """A real `kill -9` of `madbench train` after a checkpoint: the rerun resumes from it and
    ends bit-identical to an uninterrupted (in-process) run."""
    from madbench.runs import load_run

    args = [
        "train",
        "--dataset",
        "toy",
        "--method",
        "mad",
        "--steps",
        "4000",
        "--set",
        "checkpoint_every=100",
        "--set",
        "log_every=100",
        *TINY,
    ]
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [_console_script(), *args, "--out", str(killed)],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 4000, "the run finished before it could be killed"
    assert main([*args, "--out", str(killed)]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    a = load_run(killed, device="cpu").method.net.state_dict()
    b = load_run(tmp_path / "full", device="cpu").method.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
