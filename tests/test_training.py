"""Training loop, config and run loading: schedules, EMA, files, resume, errors."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from madbench.build import build_dataset, resolve_device
from madbench.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    dump_config,
    load_config,
)
from madbench.nets import ScoreMLP, count_parameters
from madbench.runs import RunLoadError, load_run
from madbench.training import EMA, NonFiniteLossError, lr_factor, train


def small(**kw) -> TrainConfig:
    base = dict(
        dataset="toy",
        method="dsm",
        steps=20,
        batch_size=16,
        device="cpu",
        log_every=5,
        checkpoint_every=10,
        warmup_steps=4,
    )
    cfg = TrainConfig(**{**base, **kw})
    cfg.net.width, cfg.net.depth = 16, 2
    return cfg.validate()


# ------------------------------------------------------------------------------ config
def test_set_parses_types_sections_and_aliases():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "batch_size=64",
            "lr=2e-4",
            "steps=1e3",
            "wandb=true",
            "net.width=32",
            "net.activation=sin",
            "schedule.sigma_max=50",
            "schedule_params.sigma_min=1e-2",
            "evaluate.rtol=1e-3",
            "evaluate.n_samples=200",
            "evaluate.sampler=ode",
        ],
    )
    assert (cfg.batch_size, cfg.lr, cfg.steps, cfg.wandb) == (64, 2e-4, 1000, True)
    assert (cfg.net.width, cfg.net.activation) == (32, "sin")
    assert cfg.schedule_params == {"sigma_max": 50.0, "sigma_min": 0.01}
    assert cfg.evaluate == {"rtol": 1e-3, "n_samples": 200, "sampler": "ode"}
    assert isinstance(cfg.evaluate["n_samples"], int) and isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "pair, key",
    [
        ("batch_size=abc", "batch_size"),
        ("batch_size=1.5", "batch_size"),
        ("foo=1", "foo"),
        ("net.foo=1", "net.foo"),
        ("ema=1.5", "ema"),
        ("net.activation=relu", "net.activation"),
        ("schedule.sigma_min=x", "schedule.sigma_min"),
        ("wandb=maybe", "wandb"),
        ("evaluate.nope=1", "evaluate.nope"),
        ("lr=-1", "lr"),
        ("device=tpu", "device"),
    ],
)
def test_set_errors_name_the_key(pair, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        apply_overrides(TrainConfig(), [pair])


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(TrainConfig(), ["lr"])


def test_yaml_round_trip_and_bad_files(tmp_path):
    cfg = apply_overrides(TrainConfig(method="mad"), ["net.depth=3", "schedule.sigma_max=20"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"batch_sise": 3}))
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(tmp_path / "typo.yaml")


def test_unknown_schedule_parameter_names_the_key():
    with pytest.raises(ConfigError, match="schedule.beta_max"):
        apply_overrides(small(), ["schedule.beta_max=5"])


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# ------------------------------------------------------------------------------ pieces
def test_lr_factor_against_the_explicit_schedule():
    total, warm = 100, 10
    f = [lr_factor(k, total, warm) for k in range(total)]
    np.testing.assert_allclose(f[:warm], np.arange(1, warm + 1) / warm)
    k = np.arange(warm, total)
    np.testing.assert_allclose(f[warm:], 0.5 * (1 + np.cos(np.pi * (k - warm) / (total - warm))))
    assert f[-1] > 0 and lr_factor(total, total, warm) == 0.0
    assert lr_factor(total, total, warm, final_ratio=0.1) == pytest.approx(0.1)


def test_ema_matches_the_scalar_recurrence():
    net = torch.nn.Linear(1, 1, bias=False)
    ema, ref = EMA(net, decay=0.9), net.weight.item()
    rng = np.random.default_rng(0)
    for k in range(30):
        with torch.no_grad():
            net.weight.fill_(float(rng.normal()))
        ema.update(k)
        d = min(0.9, (1 + k) / (10 + k))
        ref = d * ref + (1 - d) * net.weight.item()
    assert float(ema.state_dict()["weight"]) == pytest.approx(ref, rel=1e-6)


def test_default_network_size_and_zero_output_at_init():
    net = ScoreMLP(2, 2)  # 4 x 256, input 2 + 17 Fourier features
    expected = (19 * 256 + 256) + 3 * (256 * 256 + 256) + (256 * 2 + 2)
    assert count_parameters(net) == expected == 203_010
    out = net(torch.randn(5, 2), torch.zeros(5))
    assert torch.equal(out, torch.zeros(5, 2))


# ------------------------------------------------------------------------------ the loop
def test_run_directory_contents(tmp_path):
    cfg = small()
    summary = train(cfg, tmp_path, progress=False)
    assert summary["step"] == 20
    for name in ("config.yaml", "run_info.json", "history.csv", "train.log", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    assert load_config(tmp_path / "config.yaml") == cfg
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.columns) == ["step", "loss", "lr", "steps_per_s", "wall_time"]
    assert hist.step.tolist() == [5, 10, 15, 20]
    assert np.isfinite(hist.loss).all() and (np.diff(hist.wall_time) > 0).all()
    np.testing.assert_allclose(hist.lr, [cfg.lr * lr_factor(s, 20, 2) for s in hist.step])
    info = json.loads((tmp_path / "run_info.json").read_text())
    for key in (
        "git_commit",
        "versions",
        "device",
        "device_name",
        "seed",
        "n_parameters",
        "train_wall_time_s",
        "peak_memory_mb",
    ):
        assert key in info, key
    assert info["status"] == "complete" and info["versions"]["torch"] == torch.__version__
    assert "parameters" in (tmp_path / "train.log").read_text()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "lr_scheduler", "step", "rng"} <= set(ck)


def test_loaded_run_uses_ema_weights(tmp_path):
    train(small(), tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    run = load_run(tmp_path, device="cpu")
    for k, v in run.method.net.state_dict().items():
        assert torch.equal(v, ck["ema"][k])
    raw = load_run(tmp_path, device="cpu", weights="model").method.net.state_dict()
    assert not all(torch.equal(raw[k], ck["ema"][k]) for k in raw)
    assert run.complete and run.step == 20 and run.config["seed"] == 0
    # a Run stands where a Method is expected (madbench.rate_separation.learned loads runs)
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    assert torch.equal(run.score(x, t), run.method.score(x, t))
    assert run.manifold is run.method.manifold and run.schedule is run.method.schedule


def test_resume_truncates_history_and_a_finished_run_is_left_alone(tmp_path):
    train(small(), tmp_path, progress=False, stop_after=17)  # checkpoint at 10, rows to 15
    assert pd.read_csv(tmp_path / "history.csv").step.tolist() == [5, 10, 15]
    train(small(), tmp_path, progress=False)
    assert pd.read_csv(tmp_path / "history.csv").step.tolist() == [5, 10, 15, 20]
    before = (tmp_path / "checkpoint.pt").read_bytes()
    assert train(small(), tmp_path, progress=False)["step"] == 20
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_config_is_refused_unless_overwrite(tmp_path):
    train(small(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(apply_overrides(small(), ["lr=0.5"]), tmp_path, progress=False)
    # keys that do not change the result may differ
    train(apply_overrides(small(), ["log_every=2"]), tmp_path, progress=False)
    out = train(apply_overrides(small(), ["lr=0.5"]), tmp_path, progress=False, overwrite=True)
    assert out["step"] == 20 and load_config(tmp_path / "config.yaml").lr == 0.5


def test_non_finite_loss_names_step_and_method(tmp_path, monkeypatch):
    from madbench.methods.dsm import DSM

    calls = {"n": 0}
    loss = DSM.loss

    def nan_at_step_7(self, x0, generator=None):
        calls["n"] += 1
        value = loss(self, x0, generator)
        return value * float("nan") if calls["n"] == 7 else value

    monkeypatch.setattr(DSM, "loss", nan_at_step_7)
    cfg = apply_overrides(small(), ["checkpoint_every=5", "log_every=4"])
    with pytest.raises(NonFiniteLossError, match=r"step 7 of method 'dsm'"):
        train(cfg, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5


def test_empirical_data_batches_come_from_the_seeded_train_split(earth_dir, monkeypatch):
    from madbench._utils import make_generator
    from madbench.training import DataStream

    monkeypatch.setenv("MADBENCH_EARTH_DIR", str(earth_dir))
    cfg = small(dataset="earth_volcano", seed=3)
    ds = build_dataset(cfg)
    train_pts = ds.split("random", 3)["train"]
    test_pts = ds.split("random", 3)["test"]
    a = DataStream(ds, 256, make_generator(0)).next()
    b = DataStream(ds, 256, make_generator(0)).next()
    assert torch.equal(a, b) and a.shape == (256, 3)
    d_train = torch.cdist(a.double(), train_pts.double()).min(1).values
    assert float(d_train.max()) == 0.0
    # some test points are not training points (volcano has duplicates, so not all)
    unique_test = torch.cdist(test_pts.double(), train_pts.double()).min(1).values > 1e-9
    assert unique_test.any()
    hit = torch.cdist(a.double(), test_pts[unique_test].double()).min(1).values
    assert float(hit.min()) > 0


def test_wandb_is_off_by_default_and_a_clear_error_when_missing(tmp_path):
    train(small(), tmp_path / "a", progress=False)
    assert "wandb" not in sys.modules
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="'wandb'"):
            train(small(wandb=True), tmp_path / "b", progress=False)
    else:
        pytest.skip("wandb is installed; the missing-package error cannot be tested")


# ------------------------------------------------------------------------------ run loading
def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(RunLoadError, match="config.yaml"):
        load_run(tmp_path / "nothing")
    train(small(), tmp_path, progress=False)
    ck = tmp_path / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunLoadError, match="checkpoint.pt.*corrupted"):
        load_run(tmp_path, device="cpu")
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(RunLoadError, match="checkpoint.pt"):
        load_run(tmp_path, device="cpu")
    ck.unlink()
    with pytest.raises(RunLoadError, match="checkpoint.pt not found"):
        load_run(tmp_path, device="cpu")
    (tmp_path / "config.yaml").write_text("batch_size: [\n")
    with pytest.raises(RunLoadError, match="config.yaml"):
        load_run(tmp_path, device="cpu")


def test_weights_that_do_not_fit_the_config_are_reported(tmp_path):
    train(small(), tmp_path, progress=False)
    cfg = load_config(tmp_path / "config.yaml")
    cfg.net.width = 8
    dump_config(cfg, tmp_path / "config.yaml")
    with pytest.raises(RunLoadError, match="does not fit"):
        load_run(tmp_path, device="cpu")


def test_interrupted_run_loads_with_a_warning(tmp_path, capsys):
    train(small(), tmp_path, progress=False, stop_after=12)
    run = load_run(tmp_path, device="cpu")
    assert not run.complete and run.step == 10
    assert "incomplete" in capsys.readouterr().err
    assert math.isfinite(float(run.method.score(torch.zeros(3, 2), torch.full((3,), 0.5)).sum()))


@pytest.mark.parametrize("dataset", ["toy", "s2_vmf_mixture_4"])
def test_probes_record_quality_and_leave_training_unchanged(tmp_path, dataset):
    """probes.csv holds distance to M and distributional metrics at the probe steps; the
    probes use their own generator and the EMA weights, so the trained weights are identical
    to a run without probes, and resuming truncates probes like history."""
    train(small(dataset=dataset), tmp_path / "plain", progress=False)
    cfg = small(dataset=dataset, probe_every=10, probe_n=64, probe_steps=10)
    train(cfg, tmp_path / "probed", progress=False, stop_after=15)
    train(cfg, tmp_path / "probed", progress=False)
    a = torch.load(tmp_path / "plain/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "probed/checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["ema"][k], b["ema"][k])
    pr = pd.read_csv(tmp_path / "probed/probes.csv")
    assert pr.step.tolist() == [10, 20]
    assert np.isfinite(pr.dist_mean).all() and (pr.dist_mean >= 0).all()
    assert ("tv" if dataset == "toy" else "mmd2_h0.3") in pr
    hist = pd.read_csv(tmp_path / "probed/history.csv").set_index("step")
    assert np.allclose(pr.wall_time, hist.loc[pr.step, "wall_time"])


def test_data_blocks_resume_mid_block_bit_for_bit(tmp_path):
    """Synthetic data drawn 8 batches at a time (data_block, CUDA's default is 64): a run
    killed at step 15 resumes from its step-10 checkpoint, inside a block, to the very weights
    of the run that was not interrupted; its batches are draws of the law (the SO(3) mixture's
    block mean matches a fresh sample's to Monte Carlo error)."""
    cfg = small(dataset="so3_mf_mixture_3", data_block=8)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=15)
    ck = torch.load(tmp_path / "part/checkpoint.pt", weights_only=True)
    assert ck["step"] == 10 and ck["rng"]["data_block"]["used"] == 2  # 10 = 8 + 2
    train(cfg, tmp_path / "part", progress=False)
    a = torch.load(tmp_path / "full/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part/checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    from madbench.data import get_dataset
    from madbench.training import DataStream

    ds = get_dataset("so3_mf_mixture_3")
    stream = DataStream(ds, 500, torch.Generator().manual_seed(3), block=8)
    x = torch.cat([stream.next() for _ in range(8)])
    y = ds.sample(4000, generator=torch.Generator().manual_seed(4))
    se = (x.std(0) ** 2 / 4000 + y.std(0) ** 2 / 4000).sqrt()
    assert ((x.mean(0) - y.mean(0)).abs() < 5 * se).all()
