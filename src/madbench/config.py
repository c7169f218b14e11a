"""The run configuration: defaults, ``--set key=value`` overrides, checks, yaml dump and load.

Keys are the fields of :class:`TrainConfig` (``batch_size``, ``lr``, ...) and four sections:

* ``net.<field>``: the score network (:class:`NetConfig`);
* ``method.<param>`` (stored as ``method_params``): the method's own hyper-parameters, declared
  by its ``Params`` dataclass (``madbench list methods -v``); e.g. ``method.tau_min`` for RSGM;
* ``schedule.<param>`` (stored as ``schedule_params``): the noise schedule's constructor
  parameters (``sigma_min``, ``beta_max``, ...);
* ``evaluate.<key>``: evaluation settings that differ from :class:`EvalSettings`' defaults.

Every value is typed and checked once, in :meth:`TrainConfig.validate`, and every error is a
:class:`~madbench.settings.ConfigError` naming the key. Config files written by earlier
versions load: keys that moved (``rsgm_tau_min`` -> ``method.tau_min``, ...) are mapped to
their new home, so old runs resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from madbench._utils import atomic_write
from madbench.data import DATASETS, get_dataset
from madbench.methods import METHODS, get_method
from madbench.sampling import AMBIENT_SAMPLERS, INTRINSIC_SAMPLERS
from madbench.schedules import SCHEDULES, get_schedule
from madbench.settings import ConfigError, coerce, field_types, from_mapping, run_checks

__all__ = [
    "ConfigError",
    "EvalSettings",
    "NetConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_spec",
    "dump_config",
    "load_config",
]


#: the splits of empirical data (random 80/10/10, or grouped by duplicate site), and none
SPLITS = ("random", "grouped", "none")


@dataclass
class NetConfig:
    """Score network (madbench.nets.ScoreMLP): depth x width MLP, activation silu or sin."""

    width: int = 256
    depth: int = 4
    activation: str = "silu"
    n_fourier: int = 8

    def checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("width", self.width >= 1, "must be >= 1"),
            ("depth", self.depth >= 1, "must be >= 1"),
            ("activation", self.activation in ("silu", "sin"), "must be silu or sin"),
            ("n_fourier", self.n_fourier >= 0, "must be >= 0"),
        ]


@dataclass(frozen=True)
class EvalSettings:
    """What ``madbench evaluate`` computes and how much (run config section ``evaluate``)."""

    n_samples: int = 2000
    #: sampler name (None: the method's default, sde or grw)
    sampler: str | None = None
    sample_steps: int = 500
    n_sigmas: int = 16
    n_score: int = 2000
    #: test points of the NLL: None = the whole test split of empirical data, 256 fresh points of
    #: a synthetic law; a smaller number than the split takes a seeded random subset of it
    n_nll: int | None = None
    #: the noise level at which likelihoods are read (ambient: the ODE starts at sigma; RSGM at
    #: heat time sigma^2); None: each method's own smallest level. Set it per dataset so that a
    #: table compares likelihoods at one stated level.
    nll_sigma: float | None = None
    n_norm: int = 2000
    rtol: float = 1e-5
    atol: float = 1e-5
    likelihood: bool = True

    def checks(self) -> list[tuple[str, bool, str]]:
        samplers = sorted(set(AMBIENT_SAMPLERS) | set(INTRINSIC_SAMPLERS))
        return [
            ("n_samples", self.n_samples >= 2, "must be >= 2"),
            ("sampler", self.sampler in (None, *samplers), f"must be one of {samplers}"),
            ("sample_steps", self.sample_steps >= 1, "must be >= 1"),
            ("n_sigmas", self.n_sigmas >= 2, "must be >= 2"),
            ("n_score", self.n_score >= 1, "must be >= 1"),
            ("n_nll", self.n_nll is None or self.n_nll >= 1, "must be >= 1"),
            ("nll_sigma", self.nll_sigma is None or self.nll_sigma > 0, "must be > 0"),
            ("n_norm", self.n_norm >= 0, "must be >= 0"),
            ("rtol", self.rtol > 0, "must be > 0"),
            ("atol", self.atol > 0, "must be > 0"),
        ]

    def check_sampler(self, intrinsic: bool, prefix: str = "evaluate.") -> None:
        """ConfigError unless the sampler suits an intrinsic (or ambient) method."""
        valid = INTRINSIC_SAMPLERS if intrinsic else AMBIENT_SAMPLERS
        if self.sampler is not None and self.sampler not in valid:
            kind = "an intrinsic" if intrinsic else "an ambient"
            raise ConfigError(
                f"config key '{prefix}sampler' is {self.sampler!r}, not a sampler of {kind} "
                f"method; known: {', '.join(valid)}"
            )


@dataclass
class TrainConfig:
    """Everything that defines a training run (resolved copy saved as RUN_DIR/config.yaml)."""

    dataset: str = "toy"
    method: str = "dsm"
    schedule: str = "ve"
    seed: int = 0
    steps: int = 10_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: linear warm-up length; the effective warm-up is min(warmup_steps, steps // 10)
    warmup_steps: int = 1000
    #: cosine decay from lr to lr * lr_final_ratio at the last step
    lr_final_ratio: float = 0.0
    grad_clip: float = 1.0
    #: EMA decay; the decay used at step k is min(ema, (1 + k) / (10 + k))
    ema: float = 0.999
    #: empirical (earth) datasets: train on the train part of this split (random or grouped by
    #: duplicate site), seeded by ``seed``; synthetic laws have none (set by validate)
    split: str = "random"
    checkpoint_every: int = 1000
    log_every: int = 100
    #: every this many steps (and at the end) sample the EMA model and record distance to M
    #: and distributional metrics in probes.csv (quality against steps and wall time); 0: off
    probe_every: int = 0
    probe_n: int = 256
    probe_steps: int = 50
    #: also keep the checkpoint of this fraction of the steps as snapshot.pt (0.8: the state
    #: 20 % before the end, for the convergence check); 0: none
    snapshot_fraction: float = 0.0
    #: synthetic training data drawn this many batches at a time (one sampler call, and its
    #: rejection rounds' host synchronisation, per block); 0: auto, 64 on CUDA and 1 on the CPU
    #: (where a block saves nothing and 1 keeps every earlier run's random stream)
    data_block: int = 0
    #: on CUDA, the network's float32 matrix products in TF32 (10-bit mantissa products, float32
    #: sums; about 7x the FP32 rate of an H100/H200). The float64 closed forms (s_base, heat
    #: kernels) and evaluation (a separate process) are not affected; no effect on the CPU
    tf32: bool = True
    device: str = "auto"
    wandb: bool = False
    wandb_project: str = "madbench"
    net: NetConfig = field(default_factory=NetConfig)
    method_params: dict[str, Any] = field(default_factory=dict)
    schedule_params: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("seed", self.seed >= 0, "must be >= 0"),
            ("steps", self.steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", 0 < self.lr <= 1e6, "must lie in (0, 1e6] (larger steps overflow float32)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("lr_final_ratio", 0 <= self.lr_final_ratio <= 1, "must lie in [0, 1]"),
            ("grad_clip", self.grad_clip > 0, "must be > 0"),
            ("ema", 0 <= self.ema < 1, "must lie in [0, 1)"),
            ("split", self.split in SPLITS, f"must be one of {', '.join(SPLITS)}"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("probe_every", self.probe_every >= 0, "must be >= 0"),
            ("probe_n", self.probe_n >= 2, "must be >= 2"),
            ("probe_steps", self.probe_steps >= 1, "must be >= 1"),
            ("snapshot_fraction", 0 <= self.snapshot_fraction < 1, "must lie in [0, 1)"),
            ("data_block", self.data_block >= 0, "must be >= 0 (0: auto)"),
            ("device", _valid_device(self.device), "must be auto, cpu, cuda or cuda:N"),
        ]

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Type and check every key, resolve the method's parameters; returns self.

        Raises ConfigError naming the first bad key: unknown dataset, method or schedule names
        (listing the known ones), bad values, schedule parameters the schedule does not take,
        and evaluation settings that do not exist or do not suit the method.
        """
        for key in ("dataset", "method", "schedule"):
            registry = {"dataset": DATASETS, "method": METHODS, "schedule": SCHEDULES}[key]
            name = getattr(self, key)
            if name not in registry:
                known = ", ".join(sorted(registry))
                raise ConfigError(
                    f"config key {key!r}: unknown {key} {name!r}; known {key}s: {known}"
                )
        types = field_types(TrainConfig)
        for key in types:
            if key not in _SECTIONS:
                setattr(self, key, coerce(key, getattr(self, key), types[key]))
        self._resolve_split()
        run_checks(self)
        self.net = from_mapping(NetConfig, dataclasses.asdict(self.net), "net.")
        cls = get_method(self.method)
        self.method_params = cls.parse_params(self.method_params).to_dict()
        self.schedule_params = {
            k: coerce(f"schedule.{k}", v, float) for k, v in self.schedule_params.items()
        }
        get_schedule(self.schedule, **self.schedule_params)  # names a bad schedule.<param>
        settings = from_mapping(EvalSettings, self.evaluate, "evaluate.")
        settings.check_sampler(cls.intrinsic)
        self.evaluate = {k: getattr(settings, k) for k in self.evaluate}
        return self

    def _resolve_split(self) -> None:
        """Synthetic laws have no split: 'random' (the default, and what earlier versions
        wrote) becomes 'none'; empirical data need random or grouped."""
        empirical = get_dataset(self.dataset).empirical
        if not empirical and self.split in ("random", "none"):
            self.split = "none"
        elif not empirical:
            raise ConfigError(
                f"config key 'split' is {self.split!r}, but dataset {self.dataset!r} is not "
                "empirical data (its split is none)"
            )
        elif self.split == "none":
            raise ConfigError(f"config key 'split' of empirical dataset {self.dataset!r} must be "
                              "random or grouped, got 'none'")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) nested dict, as written by any madbench version."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping, got {type(d).__name__}")
        cfg = cls()
        for key, value in _migrate(d).items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
                for k, v in value.items():
                    set_value(cfg, f"{_SECTIONS[key]}.{k}", v)
            else:
                set_value(cfg, key, value)
        return cfg.validate()

    def eval_settings(self, overrides: dict[str, Any] | None = None) -> EvalSettings:
        """The defaults, then this run's ``evaluate`` section, then ``overrides`` (checked;
        keys named ``evaluate.<key>``)."""
        merged = {**self.evaluate, **(overrides or {})}
        settings = from_mapping(EvalSettings, merged, "evaluate.")
        settings.check_sampler(get_method(self.method).intrinsic)
        return settings


def _valid_device(d: str) -> bool:
    return d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())


# ---------------------------------------------------------------------- keys
#: stored section -> its prefix on the command line
_SECTIONS = {
    "net": "net",
    "method_params": "method",
    "schedule_params": "schedule",
    "evaluate": "evaluate",
}
_PREFIXES = {prefix: section for section, prefix in _SECTIONS.items()} | {
    "method_params": "method_params",
    "schedule_params": "schedule_params",
}
#: keys of configs written before methods declared their own parameters
LEGACY_METHOD_KEYS = {
    "input_scaling": "input_scaling",
    "rsgm_forward": "forward",
    "rsgm_walk_steps": "walk_steps",
    "rsgm_tau_min": "tau_min",
}


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with legacy top-level method keys moved into ``method_params`` when the method
    has that parameter (dropped otherwise: they never affected that method)."""
    out = {k: v for k, v in d.items() if k not in LEGACY_METHOD_KEYS}
    method = d.get("method", TrainConfig.method)
    if method not in METHODS or not isinstance(out.get("method_params", {}), dict):
        return out  # validate() names the problem
    params = dict(out.get("method_params") or {})
    known = {f.name for f in dataclasses.fields(get_method(method).Params)}
    for old, new in LEGACY_METHOD_KEYS.items():
        if old in d and new in known:
            params.setdefault(new, d[old])
    if params:
        out["method_params"] = params
    return out


def known_keys() -> list[str]:
    """Every settable key (sections as ``section.<key>``)."""
    top = [k for k in field_types(TrainConfig) if k not in _SECTIONS]
    return (
        top
        + [f"net.{f}" for f in field_types(NetConfig)]
        + [
            "method.<param>",
            "schedule.<param>",
            "evaluate.<key>",
        ]
    )


def set_value(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set ``key`` (see the module docstring) to ``value``; the value is typed and checked by
    :meth:`TrainConfig.validate`, unknown keys are an error here."""
    head, _, rest = key.partition(".")
    section = _PREFIXES.get(head) if rest else None
    if section == "net":
        names = field_types(NetConfig)
        if rest not in names:
            raise ConfigError(f"unknown config key {key!r}; known net keys: {', '.join(names)}")
        setattr(cfg.net, rest, value)
    elif section is not None:
        getattr(cfg, section)[rest] = value
    elif not rest and key in LEGACY_METHOD_KEYS:
        raise ConfigError(
            f"config key {key!r} is now 'method.{LEGACY_METHOD_KEYS[key]}' (a parameter of the "
            "methods that have it)"
        )
    elif rest or key not in field_types(TrainConfig) or key in _SECTIONS:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known_keys())}")
    else:
        setattr(cfg, key, value)


def apply_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings in order, then validate."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        set_value(cfg, key.strip(), value.strip())
    return cfg.validate()


#: the fields of a run spec (madbench train-stack --spec, the pipeline's runs) besides its
#: output directory ``out`` and its ``set`` pairs
SPEC_FIELDS = ("dataset", "method", "schedule", "seed", "steps")


def config_from_spec(spec: dict[str, Any], **fields: Any) -> TrainConfig:
    """The validated training config of a run spec: its :data:`SPEC_FIELDS` (and ``fields``,
    e.g. the device), then its ``set`` pairs in order."""
    cfg = TrainConfig(**{k: spec[k] for k in SPEC_FIELDS if k in spec}, **fields)
    return apply_overrides(cfg, list(spec.get("set", [])))


# ---------------------------------------------------------------------- yaml
def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as yaml, atomically."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(path, lambda p: p.write_text(text))


def load_config(path: str | Path) -> TrainConfig:
    """Read a yaml config (ConfigError naming the file if it is unreadable or invalid)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        return TrainConfig.from_dict(data or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
