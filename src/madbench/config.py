"""Training configuration: defaults, ``--set key=value`` overrides, yaml dump and load.

Keys are the fields of :class:`TrainConfig` (``batch_size``, ``lr``, ...), ``net.<field>`` for
:class:`NetConfig`, ``schedule.<param>`` (alias ``schedule_params.<param>``) for the noise
schedule's constructor parameters (e.g. ``sigma_min``, ``beta_max``) and ``evaluate.<key>`` for
the evaluation settings read by :mod:`madbench.evaluate` (checked against its ``DEFAULTS`` when
that module is importable). Every error names the offending key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from madbench._utils import atomic_write


class ConfigError(ValueError):
    """A bad configuration key or value (the message names the key)."""


@dataclass
class NetConfig:
    """Score network (madbench.nets.ScoreMLP): depth x width MLP, activation silu or sin."""

    width: int = 256
    depth: int = 4
    activation: str = "silu"
    n_fourier: int = 8


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
    #: ambient methods: network input scaled by 1 / sqrt(alpha^2 + std^2)
    input_scaling: bool = True
    rsgm_forward: str = "exact"
    rsgm_walk_steps: int = 100
    rsgm_tau_min: float = 1e-4
    #: empirical (earth) datasets: train on the train part of this split, seeded by ``seed``
    split: str = "random"
    checkpoint_every: int = 1000
    log_every: int = 100
    #: every this many steps (and at the end) sample the EMA model and record distance to M
    #: and distributional metrics in probes.csv (quality against steps and wall time); 0: off
    probe_every: int = 0
    probe_n: int = 256
    probe_steps: int = 50
    device: str = "auto"
    wandb: bool = False
    wandb_project: str = "madbench"
    net: NetConfig = field(default_factory=NetConfig)
    schedule_params: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first bad value; returns self."""
        checks = [
            ("seed", self.seed >= 0, "must be >= 0"),
            ("steps", self.steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("lr_final_ratio", 0 <= self.lr_final_ratio <= 1, "must lie in [0, 1]"),
            ("grad_clip", self.grad_clip > 0, "must be > 0"),
            ("ema", 0 <= self.ema < 1, "must lie in [0, 1)"),
            (
                "rsgm_forward",
                self.rsgm_forward in ("exact", "random_walk"),
                "must be exact or random_walk",
            ),
            ("rsgm_walk_steps", self.rsgm_walk_steps >= 1, "must be >= 1"),
            ("rsgm_tau_min", self.rsgm_tau_min > 0, "must be > 0"),
            ("split", self.split in ("random", "grouped"), "must be random or grouped"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("probe_every", self.probe_every >= 0, "must be >= 0"),
            ("probe_n", self.probe_n >= 2, "must be >= 2"),
            ("probe_steps", self.probe_steps >= 1, "must be >= 1"),
            ("device", _valid_device(self.device), "must be auto, cpu, cuda or cuda:N"),
            ("net.width", self.net.width >= 1, "must be >= 1"),
            ("net.depth", self.net.depth >= 1, "must be >= 1"),
            ("net.activation", self.net.activation in ("silu", "sin"), "must be silu or sin"),
            ("net.n_fourier", self.net.n_fourier >= 0, "must be >= 0"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"config key {key!r} {what}, got {get_value(self, key)!r}")
        for k, v in self.schedule_params.items():
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise ConfigError(f"config key 'schedule.{k}' must be a finite number, got {v!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) nested dict, type-checking every key."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping, got {type(d).__name__}")
        cfg = cls()
        for key, value in d.items():
            if key == "net":
                if not isinstance(value, dict):
                    raise ConfigError(f"config key 'net' must be a mapping, got {value!r}")
                for k, v in value.items():
                    set_value(cfg, f"net.{k}", v)
            elif key in ("schedule_params", "evaluate"):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
                for k, v in value.items():
                    set_value(cfg, f"{key}.{k}", v, check_evaluate=False)
            else:
                set_value(cfg, key, value)
        return cfg.validate()


def _valid_device(d: str) -> bool:
    return d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())


# ---------------------------------------------------------------------- typed key access
_SECTION_ALIASES = {"schedule": "schedule_params"}


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def known_keys() -> list[str]:
    """Every settable key (sections as ``section.<key>``)."""
    top = [f for f in _field_types(TrainConfig()) if f != "net"]
    top = [f"{k}.<key>" if k in ("schedule_params", "evaluate") else k for k in top]
    return top + [f"net.{f}" for f in _field_types(NetConfig())] + ["schedule.<param>"]


def get_value(cfg: TrainConfig, key: str) -> Any:
    obj, name = (cfg.net, key[4:]) if key.startswith("net.") else (cfg, key)
    return getattr(obj, name, None)


def coerce(key: str, value: Any, typ: Any) -> Any:
    """``value`` (a python value or a command-line string) as type ``typ``, else ConfigError."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                f = float(value)
                value = int(f) if f.is_integer() else value
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise ValueError
            return value
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(
        f"config key {key!r} must be of type {getattr(typ, '__name__', typ)}, got {value!r}"
    )


_BOOLS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
}


def _loose(value: Any) -> Any:
    """A command-line string read as yaml (numbers like 1e-3 included), else left as is."""
    if not isinstance(value, str):
        return value
    try:
        return float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        pass
    parsed = yaml.safe_load(value) if value.strip() else value
    return parsed if isinstance(parsed, bool | int | float | type(None)) else value


def _evaluate_defaults() -> dict[str, Any] | None:
    try:
        from madbench.evaluate import DEFAULTS
    except Exception:  # evaluation module missing or broken: accept any key
        return None
    return dict(DEFAULTS)


def set_value(cfg: TrainConfig, key: str, value: Any, check_evaluate: bool = True) -> None:
    """Set ``key`` (see module docstring) to ``value`` with type checking."""
    head, _, rest = key.partition(".")
    head = _SECTION_ALIASES.get(head, head) if rest else head
    if rest and head == "net":
        types = _field_types(cfg.net)
        if rest not in types:
            raise ConfigError(f"unknown config key {key!r}; known net keys: {', '.join(types)}")
        setattr(cfg.net, rest, coerce(key, value, types[rest]))
    elif rest and head == "schedule_params":
        cfg.schedule_params[rest] = coerce(f"schedule.{rest}", value, float)
    elif rest and head == "evaluate":
        defaults = _evaluate_defaults() if check_evaluate else None
        if defaults is not None and rest not in defaults:
            raise ConfigError(
                f"unknown config key {key!r}; known evaluate keys: {', '.join(sorted(defaults))}"
            )
        d = None if defaults is None else defaults[rest]
        typ = type(d) if isinstance(d, bool | int | float | str) else None
        if typ is float and isinstance(_loose(value), int):
            value = float(_loose(value))
        cfg.evaluate[rest] = _loose(value) if typ is None else coerce(key, _loose(value), typ)
    else:
        types = _field_types(cfg)
        if rest or key not in types or key in ("net", "schedule_params", "evaluate"):
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known_keys())}")
        setattr(cfg, key, coerce(key, value, types[key]))


def apply_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings in order, then validate."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        set_value(cfg, key.strip(), value.strip())
    return cfg.validate()


def check_schedule_params(cfg: TrainConfig, schedule_cls: type) -> None:
    """Raise ConfigError if a ``schedule.<param>`` is not a parameter of the schedule class."""
    params = [p for p in inspect.signature(schedule_cls.__init__).parameters if p != "self"]
    for k in cfg.schedule_params:
        if k not in params:
            raise ConfigError(
                f"config key 'schedule.{k}' is not a parameter of schedule {cfg.schedule!r}; "
                f"known: {', '.join(params)}"
            )


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
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        return TrainConfig.from_dict(data or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
