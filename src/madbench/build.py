"""A run's parts from its configuration: device, schedule, dataset and method (with network).

Training (:mod:`madbench.training`) and the run loader (:mod:`madbench.runs`) both build a run
here, so a loaded run is the trained one.
"""

from __future__ import annotations

import torch

from madbench.config import ConfigError, TrainConfig
from madbench.data import Dataset, get_dataset
from madbench.methods import Method, get_method
from madbench.nets import ScoreMLP
from madbench.schedules import Schedule, get_schedule


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r} but CUDA is not available")
    return dev


def build_schedule(cfg: TrainConfig) -> Schedule:
    """The schedule ``cfg.schedule`` with parameters ``cfg.schedule_params``."""
    return get_schedule(cfg.schedule, **cfg.schedule_params)


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset ``cfg.dataset``; empirical ones train on split (cfg.split, cfg.seed), which is
    made here: their files are read and verified before anything is written."""
    ds = get_dataset(cfg.dataset)
    if ds.empirical:
        ds.split_kind, ds.split_seed = cfg.split, cfg.seed
        ds.split_indices(cfg.split, cfg.seed)
    return ds


def build_network(cfg: TrainConfig, dim: int) -> ScoreMLP:
    """A fresh ScoreMLP R^dim -> R^dim, initialised from ``cfg.seed`` (CPU RNG, so CPU and
    CUDA runs start equal; the global RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return ScoreMLP(
            dim, dim, cfg.net.width, cfg.net.depth, cfg.net.activation, cfg.net.n_fourier
        )


def build_method(
    cfg: TrainConfig, dataset: Dataset, schedule: Schedule, device: torch.device
) -> Method:
    """Method ``cfg.method`` (parameters ``cfg.method_params``) with a fresh network if it
    is trainable, on ``device``."""
    cls = get_method(cfg.method)
    try:
        cls.check_supported(dataset)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    net = build_network(cfg, dataset.manifold.ambient_dim) if cls.trainable else None
    return cls(dataset, schedule, net=net, params=cfg.method_params).to(device)


def build_run(cfg: TrainConfig, device: torch.device) -> Method:
    """Dataset, schedule and method of ``cfg`` on ``device``."""
    return build_method(cfg, build_dataset(cfg), build_schedule(cfg), device)
