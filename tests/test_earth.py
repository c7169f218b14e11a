"""Earth event loaders: checksums, row counts, parsing, unit vectors, splits, download and cache.

No network: the mirror (../shared/data/earth, or $MADBENCH_EARTH_DIR) stands in for the
download, through file:// URLs or a monkeypatched fetch function.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from madbench.data import earth, get_dataset
from madbench.data.earth import (
    EARTH_FILES,
    EarthDataError,
    EarthDataset,
    earth_bytes,
    latlon_to_xyz,
    load_latlon,
    parse_latlon,
)

ROWS = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    """Tests choose their sources explicitly; the cache is a fresh temporary directory."""
    monkeypatch.delenv("MADBENCH_EARTH_DIR", raising=False)
    monkeypatch.setenv("MADBENCH_CACHE", str(tmp_path / "cache"))


def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected download of {url}")


def _pandas_latlon(path: Path) -> np.ndarray:
    """Independent parse: pandas with '#' comments, dropping a non-numeric header row."""
    df = pd.read_csv(path, comment="#", header=None, dtype=str)
    num = df.apply(pd.to_numeric, errors="coerce")
    return num.dropna().to_numpy(dtype=float)


@pytest.mark.parametrize("which", sorted(ROWS))
def test_checksum_and_row_count(which: str, earth_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(earth, "_fetch", _no_fetch)
    spec = EARTH_FILES[which]
    path = earth_dir / spec.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert spec.n_rows == ROWS[which]
    latlon = load_latlon(which, earth_dir)
    assert latlon.shape == (ROWS[which], 2) and latlon.dtype == torch.float64
    np.testing.assert_array_equal(latlon.numpy(), _pandas_latlon(path))
    assert latlon[:, 0].abs().max() <= 90 and latlon[:, 1].abs().max() <= 180


def test_latlon_to_unit_vectors(earth_dir: Path) -> None:
    ll = torch.tensor([[0.0, 0.0], [0.0, 90.0], [90.0, 17.0], [-90.0, 0.0], [0.0, 180.0]])
    ref = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]])
    torch.testing.assert_close(latlon_to_xyz(ll.double()), ref.double(), atol=1e-15, rtol=0)
    d = EarthDataset("v", "volcano", earth_dir=earth_dir)
    lat, lon = np.deg2rad(-30.2), np.deg2rad(-178.47)  # first data row of volerup.csv
    expect = [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)]
    np.testing.assert_allclose(d.points[0].numpy(), expect, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d.points.norm(dim=1).numpy(), 1.0, rtol=0, atol=1e-15)


def _rows(t: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in np.round(t.double().numpy(), 9).tolist()}


@pytest.mark.parametrize("which", ["volcano", "flood"])
@pytest.mark.parametrize("kind", ["random", "grouped"])
def test_splits_deterministic_disjoint_complete(which: str, kind: str, earth_dir: Path) -> None:
    d = EarthDataset(f"earth_{which}", which, earth_dir=earth_dir)
    n = ROWS[which]
    a, b, c = d.split_indices(kind, 0), d.split_indices(kind, 0), d.split_indices(kind, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["test"], c["test"])
    allidx = torch.cat([a["train"], a["val"], a["test"]])
    assert torch.equal(allidx.sort().values, torch.arange(n))  # disjoint and complete
    frac = {k: len(v) / n for k, v in a.items()}
    tol = 0.002 if kind == "random" else 0.05
    assert abs(frac["train"] - 0.8) <= tol and abs(frac["val"] - 0.1) <= tol, frac
    parts = d.split(kind, 0)
    assert {k: v.shape for k, v in parts.items()} == {k: (len(v), 3) for k, v in a.items()}
    assert parts["train"].dtype == torch.float32
    if kind == "grouped":
        sites = {k: _rows(v) for k, v in d.split(kind, 0, dtype=torch.float64).items()}
        assert not sites["train"] & sites["test"]
        assert not sites["train"] & sites["val"] and not sites["val"] & sites["test"]


def test_volcano_duplicates(earth_dir: Path) -> None:
    """267 distinct sites among 827 rows; a random split leaks most test sites into train."""
    d = EarthDataset("earth_volcano", "volcano", earth_dir=earth_dir)
    assert len(_rows(d.points)) == 267
    assert len({tuple(r) for r in d.latlon.tolist()}) == 267
    s = d.split("random", 0, dtype=torch.float64)
    train = _rows(s["train"])
    leaked = np.mean([tuple(r) in train for r in np.round(s["test"].numpy(), 9).tolist()])
    assert leaked > 0.6
    g = d.split("grouped", 0, dtype=torch.float64)
    assert not _rows(g["test"]) & _rows(g["train"])


def test_sample_draws_train_with_replacement(earth_dir: Path) -> None:
    d = EarthDataset(
        "earth_flood", "flood", earth_dir=earth_dir, split_kind="grouped", split_seed=3
    )
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = d.sample(20_000, g1)
    assert torch.equal(x, d.sample(20_000, g2)) and x.shape == (20_000, 3)
    assert x.dtype == torch.float32
    train = _rows(d.split("grouped", 3)["train"])
    assert _rows(x) <= train
    assert len(_rows(x)) < 20_000  # with replacement: repeats


def test_registered_datasets_use_env_mirror(earth_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(earth, "_fetch", _no_fetch)
    monkeypatch.setenv("MADBENCH_EARTH_DIR", str(earth_dir))
    for which, n in ROWS.items():
        d = get_dataset(f"earth_{which}")
        assert d.empirical and not d.has_log_prob and not d.has_score
        assert d.points.shape == (n, 3)


def test_download_then_cache(earth_dir: Path, tmp_path: Path, monkeypatch) -> None:
    url = earth_dir.as_uri() + "/"  # file:// stands in for raw.githubusercontent.com
    data = earth_bytes("volcano", base_url=url)
    cached = tmp_path / "cache" / "earth" / "volerup.csv"
    assert cached.read_bytes() == data == (earth_dir / "volerup.csv").read_bytes()
    monkeypatch.setattr(earth, "_fetch", _no_fetch)  # second time: from the cache
    assert earth_bytes("volcano") == data
    assert load_latlon("volcano").shape == (827, 2)


def test_relative_mirror_path_is_resolved(earth_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(earth, "_fetch", _no_fetch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MADBENCH_EARTH_DIR", os.path.relpath(earth_dir, tmp_path))
    assert earth_bytes("volcano") == (earth_dir / "volerup.csv").read_bytes()


def test_download_default_url_and_corrupt_download(earth_dir: Path, tmp_path: Path, monkeypatch):
    seen = []
    good = (earth_dir / "flood.csv").read_bytes()
    monkeypatch.setattr(earth, "_fetch", lambda u: seen.append(u) or good[:-1] + b"9")
    with pytest.raises(EarthDataError, match="checksum mismatch for flood.csv") as e:
        earth_bytes("flood")
    assert EARTH_FILES["flood"].sha256 in str(e.value)
    assert hashlib.sha256(good[:-1] + b"9").hexdigest() in str(e.value)
    assert seen == [earth.BASE_URL + "flood.csv"]
    assert "raw.githubusercontent.com/oxcsml/riemannian-score-sde/b35b739" in seen[0]
    assert not (tmp_path / "cache" / "earth" / "flood.csv").exists()  # nothing cached


def test_corrupted_mirror_and_cache(earth_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(earth, "_fetch", _no_fetch)
    bad = tmp_path / "mirror"
    shutil.copytree(earth_dir, bad)
    (bad / "fire.csv").chmod(0o644)
    with (bad / "fire.csv").open("ab") as f:
        f.write(b"\n0.0,0.0")
    actual = hashlib.sha256((bad / "fire.csv").read_bytes()).hexdigest()
    with pytest.raises(EarthDataError, match="fire.csv") as e:
        load_latlon("fire", bad)
    assert EARTH_FILES["fire"].sha256 in str(e.value) and actual in str(e.value)
    cache = tmp_path / "cache" / "earth"
    cache.mkdir(parents=True)
    (cache / "fire.csv").write_bytes((bad / "fire.csv").read_bytes())
    with pytest.raises(EarthDataError, match="checksum mismatch"):
        earth_bytes("fire")


def test_missing_file_and_bad_arguments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(earth, "_fetch", _no_fetch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EarthDataError, match="quakes_all.csv not found"):
        load_latlon("earthquake", tmp_path / "empty")
    monkeypatch.setenv("MADBENCH_EARTH_DIR", str(tmp_path / "empty"))
    with pytest.raises(EarthDataError, match="volerup.csv not found"):
        get_dataset("earth_volcano").split()
    with pytest.raises(KeyError, match="unknown earth dataset"):
        earth_bytes("lava")
    with pytest.raises(ValueError, match="split kind"):
        EarthDataset("x", "fire", split_kind="stratified")

    def broken(url: str) -> bytes:
        raise OSError("no network")

    monkeypatch.delenv("MADBENCH_EARTH_DIR")
    monkeypatch.setattr(earth, "_fetch", broken)
    with pytest.raises(EarthDataError, match="could not download volerup.csv"):
        earth_bytes("volcano")


def test_parser_rejects_garbage() -> None:
    text = "# comment\nlat,lon\n1.0,2.0\n3.0,4.0\n"
    torch.testing.assert_close(
        parse_latlon(text, "t.csv"), torch.tensor([[1.0, 2], [3, 4]]).double()
    )
    torch.testing.assert_close(
        parse_latlon("# c\r\n1,2\r\n3,4", "t.csv"), torch.tensor([[1.0, 2], [3, 4]]).double()
    )
    with pytest.raises(EarthDataError, match="t.csv, line 4"):
        parse_latlon("# c\nlat,lon\n1,2\n3;4\n", "t.csv")
    with pytest.raises(EarthDataError, match="line 2"):
        parse_latlon("lat,lon\nLAT,LON\n1,2\n", "t.csv")
    with pytest.raises(EarthDataError, match="out of range"):
        parse_latlon("95,2\n", "t.csv")


def test_points_lie_on_the_sphere_manifold(earth_dir: Path) -> None:
    from madbench.manifolds import Sphere

    sphere = Sphere(2)
    d = EarthDataset("earth_fire", "fire", earth_dir=earth_dir)
    assert d.manifold.ambient_dim == 3 == sphere.ambient_dim
    assert float(d.manifold.distance_to_manifold(d.split()["test"]).max()) < 1e-6
