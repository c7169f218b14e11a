"""Earth event datasets on S^2 (docs/science.md 3): volcano, earthquake, flood and fire.

The csv files are the ones distributed with the RSGM code (riemannian-score-sde, commit
b35b739), from NOAA NGDC, the Dartmouth Flood Observatory and NASA FIRMS. Each row is an event
(latitude, longitude) in degrees, mapped to the unit vector
x = cos(lat) cos(lon), y = cos(lat) sin(lon), z = sin(lat). Duplicate sites are kept.

Where the files come from, in order:
1. a local mirror directory (argument ``earth_dir``, config key ``earth_dir``, or the
   environment variable ``MADBENCH_EARTH_DIR``): the file must be there;
2. the cache ``$MADBENCH_CACHE/earth`` (default ``~/.cache/madbench/earth``);
3. a download from ``BASE_URL``, written to the cache.
Every file is checked against its sha256 before it is parsed; a mismatch or a missing file is
an error naming the file and both hashes, never silently different data.

These datasets are empirical: no density, no score. ``split(kind, seed)`` gives train/val/test;
``sample(n, generator)`` draws the train split of (``split_kind``, ``split_seed``) with replacement.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from madbench._utils import atomic_write, make_generator
from madbench.data.base import Dataset, register_dataset
from madbench.manifolds.base import Manifold
from madbench.manifolds.sphere import Sphere

BASE_URL = (
    "https://raw.githubusercontent.com/oxcsml/riemannian-score-sde/"
    "b35b739464ca8264e418e400301f5f45cb7a16b3/data/"
)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class EarthFile:
    filename: str
    sha256: str
    n_rows: int


EARTH_FILES: dict[str, EarthFile] = {
    "volcano": EarthFile(
        "volerup.csv", "f7bbaf32a412f5fe82350f48e0c55100be260803969c16557343f687fd0593fc", 827
    ),
    "earthquake": EarthFile(
        "quakes_all.csv", "3e5e1a10fb2faf1899106264289334037d039f00f5265d13dad388a93d8ff2f7", 6120
    ),
    "flood": EarthFile(
        "flood.csv", "ffb1e3182c3053afcdeceec4727c262a29da10255d20747c08144da5b0963486", 4875
    ),
    "fire": EarthFile(
        "fire.csv", "c5c6c9490b1d8c58ba9eb78d9e2f82d1c1e62694ca5cff917c54600d3d83f459", 12809
    ),
}


class EarthDataError(RuntimeError):
    """A missing, corrupted or unparsable earth data file."""


def cache_dir() -> Path:
    """``$MADBENCH_CACHE`` or ``~/.cache/madbench``."""
    return Path(os.environ.get("MADBENCH_CACHE", Path.home() / ".cache" / "madbench"))


def _fetch(url: str) -> bytes:
    """Download ``url`` (http(s) or file://); replaced in tests."""
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def _check_sha(data: bytes, spec: EarthFile, where: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise EarthDataError(
            f"checksum mismatch for {spec.filename} ({where}): expected sha256 {spec.sha256}, "
            f"got {actual}; the file is not the published one (delete it or fix the mirror)"
        )


def earth_bytes(name: str, earth_dir: str | Path | None = None, base_url: str = BASE_URL) -> bytes:
    """The verified bytes of the csv of dataset ``name`` (mirror, else cache, else download)."""
    if name not in EARTH_FILES:
        raise KeyError(f"unknown earth dataset {name!r}; known: {', '.join(EARTH_FILES)}")
    spec = EARTH_FILES[name]
    mirror = earth_dir if earth_dir is not None else os.environ.get("MADBENCH_EARTH_DIR")
    if mirror:
        mirror = Path(mirror).expanduser().resolve()  # a relative path is one from the cwd
        path = mirror / spec.filename
        if not path.is_file():
            raise EarthDataError(
                f"earth data file {spec.filename} not found in mirror {mirror} (expected {path}, "
                f"sha256 {spec.sha256})"
            )
        data = path.read_bytes()
        _check_sha(data, spec, str(path))
        return data
    cached = cache_dir() / "earth" / spec.filename
    if cached.is_file():
        data = cached.read_bytes()
        _check_sha(data, spec, str(cached))
        return data
    url = base_url + spec.filename
    try:
        data = _fetch(url)
    except OSError as e:
        raise EarthDataError(
            f"could not download {spec.filename} from {url}: {e}; "
            "set MADBENCH_EARTH_DIR to a local mirror"
        ) from e
    _check_sha(data, spec, url)
    atomic_write(cached, lambda p: p.write_bytes(data))
    return data


def _floats(line: str) -> tuple[float, float] | None:
    parts = line.split(",")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def parse_latlon(text: str, filename: str) -> Tensor:
    """Rows (lat, lon) in degrees, float64 (n, 2). Skips '#' comments, blank lines and at most
    one header line before the first data row; any other unparsable row is an error."""
    rows: list[tuple[float, float]] = []
    header_seen = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pair = _floats(line)
        if pair is None:
            if rows or header_seen:
                raise EarthDataError(f"{filename}, line {lineno}: cannot parse {raw!r}")
            header_seen = True
            continue
        rows.append(pair)
    latlon = torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)
    bad = ~torch.isfinite(latlon).all(-1) | (latlon[:, 0].abs() > 90) | (latlon[:, 1].abs() > 360)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise EarthDataError(f"{filename}: data row {i} out of range: {latlon[i].tolist()}")
    return latlon


def latlon_to_xyz(latlon: Tensor) -> Tensor:
    """(lat, lon) in degrees (n, 2) -> unit vectors (n, 3):
    (cos lat cos lon, cos lat sin lon, sin lat)."""
    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def load_latlon(name: str, earth_dir: str | Path | None = None, base_url: str = BASE_URL) -> Tensor:
    """Verified and parsed (lat, lon) rows of earth dataset ``name``, float64 (n, 2)."""
    data = earth_bytes(name, earth_dir, base_url)
    spec = EARTH_FILES[name]
    latlon = parse_latlon(data.decode("utf-8"), spec.filename)
    if latlon.shape[0] != spec.n_rows:
        raise EarthDataError(f"{spec.filename}: {latlon.shape[0]} rows, expected {spec.n_rows}")
    return latlon


def random_split_indices(n: int, seed: int) -> dict[str, Tensor]:
    """Seeded random 80/10/10 split of range(n): sorted int64 index tensors train/val/test."""
    perm = torch.randperm(n, generator=make_generator(seed))
    n_val, n_test = round(SPLIT_FRACTIONS[1] * n), round(SPLIT_FRACTIONS[2] * n)
    cuts = (n - n_val - n_test, n - n_test)
    parts = (perm[: cuts[0]], perm[cuts[0] : cuts[1]], perm[cuts[1] :])
    return {k: p.sort().values for k, p in zip(("train", "val", "test"), parts, strict=True)}


def site_groups(xyz: Tensor) -> Tensor:
    """Group id (n,) per row; rows at the same point of S^2 (to 1e-9) share a group."""
    keys = torch.round(xyz.to(torch.float64) * 1e9).to(torch.int64)
    return torch.unique(keys, dim=0, return_inverse=True)[1]


def grouped_split_indices(groups: Tensor, seed: int) -> dict[str, Tensor]:
    """Seeded split that keeps each group whole: groups in random order fill train until 80 %
    of the rows, then val until 90 %, then test. Sorted int64 index tensors train/val/test."""
    n, n_groups = groups.shape[0], int(groups.max()) + 1
    order = torch.randperm(n_groups, generator=make_generator(seed))
    sizes = torch.bincount(groups, minlength=n_groups)[order]
    start = torch.cumsum(sizes, 0) - sizes  # rows placed before each group
    f_train, f_val = SPLIT_FRACTIONS[0], SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]
    part_of_ordered = (start >= f_train * n).to(torch.int64) + (start >= f_val * n).to(torch.int64)
    part = torch.empty(n_groups, dtype=torch.int64)
    part[order] = part_of_ordered
    row_part = part[groups]
    out = {k: (row_part == i).nonzero().squeeze(-1) for i, k in enumerate(("train", "val", "test"))}
    if any(v.numel() == 0 for v in out.values()):
        raise ValueError(f"grouped split left a part empty ({n} rows, {n_groups} groups)")
    return out


class EarthDataset(Dataset):
    """Events on S^2 (unit vectors in R^3) with fixed seeded splits; no density, no score.

    ``earth_dir``: local mirror (config key ``earth_dir``; default ``$MADBENCH_EARTH_DIR``, else
    cache/download). ``sample`` draws the train part of split (``split_kind``, ``split_seed``).
    """

    empirical = True
    family = "earth"
    log_prob_convention = "area on S^2 (vol = 4 pi); empirical data, no closed form"

    def __init__(
        self,
        name: str,
        which: str,
        earth_dir: str | Path | None = None,
        split_kind: str = "random",
        split_seed: int = 0,
    ):
        super().__init__(name)
        if which not in EARTH_FILES:
            raise KeyError(f"unknown earth dataset {which!r}; known: {', '.join(EARTH_FILES)}")
        self._check_kind(split_kind)
        self.which, self.earth_dir = which, earth_dir
        self.split_kind, self.split_seed = split_kind, int(split_seed)
        self._latlon: Tensor | None = None
        self._manifold: Manifold | None = None
        self._splits: dict[tuple[str, int], dict[str, Tensor]] = {}

    @property
    def manifold(self) -> Manifold:
        """Sphere(2)."""
        if self._manifold is None:
            self._manifold = Sphere(2)
        return self._manifold

    @property
    def latlon(self) -> Tensor:
        """All rows (lat, lon) in degrees, float64 (n, 2), loaded on first use."""
        if self._latlon is None:
            self._latlon = load_latlon(self.which, self.earth_dir)
        return self._latlon

    @property
    def points(self) -> Tensor:
        """All events as unit vectors, float64 (n, 3)."""
        return latlon_to_xyz(self.latlon)

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in ("random", "grouped"):
            raise ValueError(f"split kind must be 'random' or 'grouped', got {kind!r}")

    def split_indices(self, kind: str = "random", seed: int = 0) -> dict[str, Tensor]:
        """Row indices of train/val/test for a seeded ``random`` or duplicate-``grouped`` split."""
        self._check_kind(kind)
        key = (kind, int(seed))
        if key not in self._splits:
            if kind == "random":
                self._splits[key] = random_split_indices(self.latlon.shape[0], seed)
            else:
                self._splits[key] = grouped_split_indices(site_groups(self.points), seed)
        return {k: v.clone() for k, v in self._splits[key].items()}

    def split(
        self, kind: str = "random", seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> dict[str, Tensor]:
        """dict(train=, val=, test=) of unit vectors (n_part, 3) in ``dtype``."""
        pts = self.points.to(dtype)
        return {k: pts[i] for k, i in self.split_indices(kind, seed).items()}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws with replacement from the train split (float32, generator's device)."""
        train = self.split(self.split_kind, self.split_seed)["train"]
        dev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(train.shape[0], (n,), generator=generator, device=dev)
        return train.to(dev)[idx]


def _register(which: str) -> None:
    name = f"earth_{which}"
    register_dataset(name)(lambda: EarthDataset(name, which))


for _which in EARTH_FILES:
    _register(_which)
