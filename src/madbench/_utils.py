"""Small shared helpers: sigma broadcasting, seeding, atomic writes, cached constant tensors,
and the switch between the CPU's fast paths and the fixed-work paths of accelerators."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def tensor_cache(fn: Callable[..., T]) -> Callable[..., T]:
    """``functools.cache`` for functions that build constant tensors (hashable arguments).

    The tensors are built outside inference mode: a first call made under
    ``torch.inference_mode()`` would otherwise cache inference tensors, which autograd refuses
    to save in every later differentiable use of the same constants.
    """

    @functools.cache
    @functools.wraps(fn)
    def cached(*args):
        with torch.inference_mode(False):
            return fn(*args)

    return cached


_FORCED_FIXED_WORK = False


def fixed_work(t: Tensor) -> bool:
    """Whether hot-path code on ``t``'s device takes its fixed-work path: no host
    synchronisation (no data-dependent grouping, ``.any()`` branches or value checks that raise),
    so that a whole training step can be captured and replayed (CUDA graphs). True off the CPU
    and inside :func:`forced_fixed_work`; the CPU keeps its data-dependent fast paths."""
    return _FORCED_FIXED_WORK or t.device.type != "cpu"


@contextlib.contextmanager
def forced_fixed_work() -> Iterator[None]:
    """Run the fixed-work paths on every device (tests compare them with the CPU's)."""
    global _FORCED_FIXED_WORK
    before, _FORCED_FIXED_WORK = _FORCED_FIXED_WORK, True
    try:
        yield
    finally:
        _FORCED_FIXED_WORK = before


def check_all(cond: Tensor, message: str) -> None:
    """ValueError(message) unless every element of ``cond`` is true. On the fixed-work path an
    asynchronous device assertion instead (no host synchronisation; a failure is reported at a
    later kernel launch and ends the process's use of the device)."""
    if fixed_work(cond):
        torch._assert_async(cond.all(), message)
    elif not bool(cond.all()):
        raise ValueError(message)


def as_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """Return sigma as a tensor of shape (n, 1) with the dtype and device of ``x`` (n, D).

    ``sigma`` may be a python float, a 0-d tensor or a tensor of shape (n,) or (n, 1).
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s.expand(x.shape[0]).unsqueeze(-1)
    if s.ndim == 1:
        if s.shape[0] != x.shape[0]:
            raise ValueError(f"sigma has shape {tuple(s.shape)} but x has {x.shape[0]} points")
        return s.unsqueeze(-1)
    if s.ndim == 2 and s.shape[1] == 1:
        return s
    raise ValueError(f"sigma must be a float or have shape (n,), got {tuple(s.shape)}")


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _umask() -> int:
    """The process umask (read from /proc on Linux: setting it to read it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` onto ``path``.

    A crash in ``write`` leaves any earlier file at ``path`` untouched. The file gets the mode
    a plain ``open`` would give it (0666 less the umask), not mkstemp's private 0600, so a web
    server or a colleague can read tables, dashboards and results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry(dict[str, T]):
    """A name -> object map whose lookups fail with the list of known names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return deco

    def get_or_raise(self, name: str) -> T:
        if name not in self:
            known = ", ".join(sorted(self))
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self[name]
