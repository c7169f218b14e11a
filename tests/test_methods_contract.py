"""One contract for every registered method x one dataset per manifold family (benchopt-style).

A new method registered in madbench.methods is tested here with no new test code. Combinations
a method does not support (check_supported raises) are skipped with its reason.
"""

from __future__ import annotations

import math

import pytest
import torch

from madbench._utils import make_generator
from madbench.build import build_dataset, build_method, build_schedule
from madbench.config import TrainConfig
from madbench.data import get_dataset
from madbench.methods import get_method, list_methods
from madbench.runs import load_run
from madbench.training import train

# one dataset per manifold family: discrete, sphere, SO(3), torus
FAMILIES = ["toy", "s2_vmf_mixture_4", "so3_mf_mixture_3", "torus_vonmises"]
COMBOS = [(m, d) for m in list_methods() for d in FAMILIES]
CPU = torch.device("cpu")


def tiny_config(method: str, dataset: str, **kw) -> TrainConfig:
    cfg = TrainConfig(
        method=method,
        dataset=dataset,
        schedule="ve",
        steps=6,
        batch_size=32,
        device="cpu",
        log_every=2,
        checkpoint_every=3,
        **kw,
    )
    cfg.net.width, cfg.net.depth = 32, 2
    return cfg.validate()


def supported_or_skip(method: str, dataset: str) -> None:
    try:
        get_method(method).check_supported(get_dataset(dataset))
    except ValueError as e:
        pytest.skip(f"unsupported: {e}")


def build(cfg: TrainConfig):
    return build_method(cfg, build_dataset(cfg), build_schedule(cfg), CPU)


@pytest.fixture(params=COMBOS, ids=[f"{m}-{d}" for m, d in COMBOS])
def combo(request):
    supported_or_skip(*request.param)
    return request.param


def test_the_loss_splits_into_draws_inputs_and_example_losses(combo):
    """What a stack batches (madbench.stack): the draws of two runs, their rows through one
    loss_inputs_from and one example_losses, give each run the loss it has alone."""
    method = build(tiny_config(*combo))
    if not method.trainable:
        pytest.skip("no weights: never stacked")
    x0 = [method.dataset.sample(32, make_generator(s)) for s in (0, 1)]
    alone = [method.loss(x, make_generator(10 + s)) for s, x in enumerate(x0)]
    draws = [method.loss_draws(x, make_generator(10 + s)) for s, x in enumerate(x0)]
    joined = tuple(torch.cat(d) for d in zip(*draws, strict=True))
    (x, c), ctx = method.loss_inputs_from(torch.cat(x0), joined)
    out = method.net(x, c)
    both = method.example_losses(out, ctx).reshape(2, 32).mean(1)
    assert torch.allclose(both, torch.stack(alone), rtol=1e-5, atol=0), (both, alone)


def test_loss_finite_and_decreases_on_a_fixed_batch(combo):
    """Fixed data and fixed noise (same generator seed each step): the loss is a deterministic
    function of the weights, so 15 Adam steps at lr 1e-2 must lower it (by > 20 %)."""
    method = build(tiny_config(*combo))
    x0 = method.dataset.sample(64, make_generator(0))
    if not method.trainable:
        loss = method.loss(x0, make_generator(1))
        assert loss.ndim == 0 and math.isfinite(float(loss)) and not loss.requires_grad
        return
    opt = torch.optim.Adam(method.net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = method.loss(x0, make_generator(1))
        assert loss.ndim == 0 and math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_score_shape_and_samples_on_manifold(combo):
    """score(x, t) is (n, D) and finite (tangent for intrinsic methods); sample() returns raw
    and projected (n, D) arrays, the projected ones on M, identical under the same seed."""
    from madbench.sampling import sample

    method = build(tiny_config(*combo))
    man, d = method.manifold, method.manifold.ambient_dim
    x = method.dataset.sample(16, make_generator(0))
    t = torch.linspace(method.schedule.t_min + 0.01, method.schedule.T, 16)
    if not method.intrinsic:
        x = x + 0.1 * torch.randn(x.shape, generator=make_generator(1))
    s = method.score(x, t).detach()
    assert s.shape == (16, d) and torch.isfinite(s).all()
    if method.intrinsic:
        torch.testing.assert_close(man.to_tangent(x, s), s, atol=1e-5, rtol=1e-5)
    s64 = method.score(x.double(), t.double()).detach()  # float64 callers (likelihood, evaluation)
    assert s64.dtype == torch.float64
    torch.testing.assert_close(s64.float(), s, rtol=1e-4, atol=1e-4 * s.abs().max().item())
    with torch.no_grad():
        out = sample(method, 32, steps=8, generator=make_generator(3))
        again = sample(method, 32, steps=8, generator=make_generator(3))
    assert out["raw"].shape == out["projected"].shape == (32, d)
    assert torch.isfinite(out["raw"]).all()
    assert float(man.distance_to_manifold(out["projected"].double()).max()) < 1e-5
    assert torch.equal(out["raw"], again["raw"])


def _weights(run_dir):
    return {
        k: v.clone() for k, v in load_run(run_dir, device="cpu").method.net.state_dict().items()
    }


def test_determinism_and_resume_after_interruption(combo, tmp_path):
    """A run killed after step 5 (last checkpoint at 3) and started again ends with weights
    bit-identical to an uninterrupted run of the same seed; another seed gives other weights."""
    method, dataset = combo
    cfg = tiny_config(method, dataset)
    if not get_method(method).trainable:
        train(cfg, tmp_path / "a", progress=False)
        assert not (tmp_path / "a" / "checkpoint.pt").exists()
        assert (tmp_path / "a" / "no_weights.txt").exists()
        assert load_run(tmp_path / "a", device="cpu").method.net is None
        return
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "resumed", progress=False, stop_after=5)
    assert part["step"] == 5
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    done = train(cfg, tmp_path / "resumed", progress=False)
    assert full["step"] == done["step"] == 6
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = train(tiny_config(method, dataset, seed=1), tmp_path / "seed1", progress=False)
    assert other["step"] == 6
    wc = _weights(tmp_path / "seed1")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# --------------------------------------------------------------------------------------------
# Parametrisation checks against independent computations
# --------------------------------------------------------------------------------------------


def _toy_log_density(x: torch.Tensor, a: float, s: float, weights) -> torch.Tensor:
    """log sum_k w_k N(x; a m_k, s^2 I) for the toy atoms m = (-1, 0), (1, 0), in float64."""
    atoms = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    d2 = (x[:, None, :] - a * atoms[None]).square().sum(-1)
    logw = torch.tensor(weights, dtype=torch.float64).log()
    return torch.logsumexp(logw - d2 / (2 * s * s), -1) - math.log(2 * math.pi * s * s)


@pytest.mark.parametrize("schedule", ["ve", "vp", "vp_cosine"])
def test_oracle_and_mad_scores_match_autograd_of_the_exact_marginal(schedule):
    """In the schedule's own variable x_t = a x0 + s eps, the oracle's score must be the gradient
    of log p_t (toy, p = 0.1 / 0.9) and MAD's score at initialisation (zero network output) that
    of the uniform-base marginal: both by autograd of an explicit Gaussian-mixture density."""
    out = {}
    for m in ("oracle", "mad"):
        cfg = TrainConfig(method=m, dataset="toy", schedule=schedule)
        cfg.net.width, cfg.net.depth = 8, 1
        method = build(cfg)
        if method.net is not None:
            method.net.double()
        out[m] = method
    sch = out["oracle"].schedule
    for t in (sch.t_min + 0.02, 0.3, 0.7):
        t64 = torch.tensor(t, dtype=torch.float64)
        a, s = float(sch.alpha(t64)), float(sch.std(t64))
        x = torch.randn(64, 2, generator=make_generator(5), dtype=torch.float64) * (a + s)
        x.requires_grad_(True)
        tt = torch.full((64,), t, dtype=torch.float64)
        for m, w in (("oracle", [0.1, 0.9]), ("mad", [0.5, 0.5])):
            (g,) = torch.autograd.grad(_toy_log_density(x, a, s, w).sum(), x)
            got = out[m].score(x.detach(), tt)
            torch.testing.assert_close(got, g, rtol=1e-6, atol=1e-8 / s**2)


@pytest.mark.parametrize("schedule", ["ve", "vp"])
@pytest.mark.parametrize("dataset", FAMILIES)
def test_exact_score_has_the_lowest_dsm_loss(dataset, schedule):
    """DSM identity: E loss(u) = E ||u - s score_true||^2 + const, so the oracle's loss is below
    MAD at initialisation (score = s_base) and DSM at initialisation (score = 0). 4096 points,
    common random numbers; the smallest gap (toy, VE) is 0.04 against a spread of ~0.007."""
    losses = {}
    for m in ("oracle", "mad", "dsm"):
        cfg = TrainConfig(method=m, dataset=dataset, schedule=schedule)
        cfg.net.width, cfg.net.depth = 8, 1
        method = build(cfg)
        x0 = method.dataset.sample(4096, make_generator(0))
        with torch.no_grad():
            losses[m] = method.loss(x0, make_generator(1)).item()
    assert losses["oracle"] + 0.01 < losses["mad"] < losses["dsm"], losses


# ------------------------------------------------------------------ the ambient method's hooks
def test_a_weighted_dsm_is_a_short_subclass():
    """docs/architecture.md's example: a DSM whose per-example loss is weighted by sigma^power,
    written with the ``loss_weight`` hook and its own ``Params``, gives the weighted loss that
    a direct computation with the same draws gives, and checks its parameter."""
    import dataclasses

    from madbench.methods import AmbientParams
    from madbench.methods.dsm import DSM
    from madbench.settings import ConfigError

    @dataclasses.dataclass(frozen=True)
    class WeightedParams(AmbientParams):
        power: float = 1.0

        def checks(self):
            return [("power", self.power >= 0, "must be >= 0")]

    class WeightedDSM(DSM):
        Params = WeightedParams

        def loss_weight(self, a, s):
            return (s / a) ** self.params.power

    cfg = tiny_config("dsm", "toy")
    plain = build(cfg)
    ds, sch = plain.dataset, plain.schedule
    weighted = WeightedDSM(ds, sch, net=plain.net, params={"power": "2"})
    assert weighted.params.power == 2.0 and weighted.params.input_scaling
    x0 = ds.sample(64, generator=make_generator(0))
    got = weighted.loss(x0, make_generator(1))
    g = make_generator(1)  # the same draws, the weighted mean by hand
    t = sch.sample_t(64, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a, s = plain.coefficients(t, x0.dtype)
    err = (plain.scaled_score(a * x0 + s * eps, a, s) + eps).square().sum(-1)
    expected = ((s / a).reshape(-1) ** 2 * err).mean()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(got, plain.loss(x0, make_generator(1)))
    with pytest.raises(ConfigError, match="'method.power' must be >= 0"):
        WeightedDSM(ds, sch, net=plain.net, params={"power": -1})
    with pytest.raises(ConfigError, match="unknown config key 'method.powr'"):
        WeightedDSM(ds, sch, net=plain.net, params={"powr": 1})
