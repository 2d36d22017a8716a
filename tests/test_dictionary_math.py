"""Exact checks of the dictionaries, the reflections and probe distillation (SPEC §3, §4)."""

import pytest
import torch

from didae_xai.dictionary import Dictionary, ProcrustesDictionary, SVDDictionary
from didae_xai.explain import (
    boundary_inversion,
    component_reflection,
    distill_probe,
    householder_reflection,
    margin,
)


def planted(n=2000, d=32, seed=0):
    """Embeddings with two attributes planted along orthonormal directions, plus small noise."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    dirs = q[:, :2].T  # (2, D) orthonormal
    y = torch.rand(n, 2, generator=g, dtype=torch.float64)
    z = 3.0 + y @ (4 * dirs) + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z, y, dirs


def test_procrustes_recovers_planted_directions_in_order():
    z, y, dirs = planted()
    dic = ProcrustesDictionary(names=["color", "size"]).fit(z, y)
    assert dic.components_.shape == (2, 32) and dic.names_ == ["color", "size"]
    assert torch.allclose(dic.components_ @ dic.components_.T, torch.eye(2, dtype=torch.float64), atol=1e-10)
    cos = (dic.components_ * dirs).sum(1)
    assert (cos > 0.999).all()
    assert torch.allclose(dic.mean_, z.mean(0))
    coords = dic.transform(z)
    assert torch.corrcoef(torch.stack([coords[:, 0], y[:, 0]]))[0, 1] > 0.999


def test_procrustes_is_the_polar_factor():
    z, y, _ = planted(n=200)
    dic = ProcrustesDictionary().fit(z, y)
    m = y.T @ (z - z.mean(0))
    # The polar factor maximises trace(W M^T) over orthonormal frames: compare with random frames.
    best = torch.trace(dic.components_ @ m.T)
    for s in range(20):
        q, _ = torch.linalg.qr(torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(s)))
        assert torch.trace(q.T @ m.T) <= best + 1e-9


def test_svd_atoms_are_principal_directions():
    z, _, dirs = planted()
    dic = SVDDictionary(n_components=2).fit(z)
    assert torch.allclose(dic.components_ @ dic.components_.T, torch.eye(2, dtype=torch.float64), atol=1e-10)
    # The planted 2-d subspace is the top principal subspace.
    proj = dic.components_ @ dirs.T
    assert torch.linalg.svdvals(proj).min() > 0.999
    assert dic.names_ == ["pc0", "pc1"]
    again = SVDDictionary(2).fit(z.clone())
    assert torch.equal(again.components_, dic.components_)  # deterministic signs


def test_dictionary_errors_and_round_trip(tmp_path):
    z, y, _ = planted(n=50, d=4)
    with pytest.raises(ValueError, match="D >= K"):
        ProcrustesDictionary().fit(z[:, :1], y)
    with pytest.raises(ValueError, match="needs attribute labels"):
        ProcrustesDictionary().fit(z)
    with pytest.raises(ValueError, match="constant"):
        ProcrustesDictionary().fit(z, torch.ones(50, 2))
    bad = z.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SVDDictionary(2).fit(bad)
    with pytest.raises(RuntimeError, match="not fitted"):
        SVDDictionary(2).transform(z)
    dic = ProcrustesDictionary(["a", "b"]).fit(z, y)
    with pytest.raises(ValueError, match="5 dimensions but the dictionary has 4"):
        dic.transform(torch.zeros(3, 5))
    dic.save(tmp_path / "dict.safetensors")
    back = Dictionary.load(tmp_path / "dict.safetensors")
    assert isinstance(back, ProcrustesDictionary) and back.names_ == ["a", "b"]
    assert torch.equal(back.components_, dic.components_) and torch.equal(back.mean_, dic.mean_)
    assert back.atom("b") == 1
    with pytest.raises(KeyError, match="No atom named"):
        back.atom("c")


def test_boundary_inversion_mirrors_the_margin_along_the_atom():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g, dtype=torch.float64)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    b = 0.7
    u = torch.randn(16, generator=g, dtype=torch.float64)
    z_cf, movable = boundary_inversion(z, w, u, b)
    assert movable.all()
    assert torch.allclose(margin(z_cf, w, b), -margin(z, w, b), atol=1e-10)
    delta = z_cf - z
    unit = u / u.norm()
    # z' - z is parallel to u: no component orthogonal to it.
    assert torch.allclose(delta - (delta @ unit)[:, None] * unit, torch.zeros_like(delta), atol=1e-10)
    on_boundary, _ = boundary_inversion(z, w, u, b, lam=1.0)
    assert torch.allclose(margin(on_boundary, w, b), torch.zeros(64, dtype=torch.float64), atol=1e-10)


def test_degenerate_atom_is_reported_not_divided_by_zero():
    z = torch.randn(5, 3, dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    u = torch.tensor([0.0, 1.0, 1e-9], dtype=torch.float64)  # almost parallel to the boundary
    z_cf, movable = boundary_inversion(z, w, u)
    assert not movable.any()
    assert torch.equal(z_cf, z) and torch.isfinite(z_cf).all()


def test_per_sample_boundaries_and_householder():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 8, generator=g, dtype=torch.float64)
    w = torch.randn(10, 8, generator=g, dtype=torch.float64)  # one boundary per sample (multi-class pairs)
    b = torch.randn(10, generator=g, dtype=torch.float64)
    z_cf, _ = boundary_inversion(z, w, torch.randn(8, generator=g, dtype=torch.float64), b)
    assert torch.allclose(margin(z_cf, w, b), -margin(z, w, b), atol=1e-9)
    h = householder_reflection(z, w, b)
    assert torch.allclose(margin(h, w, b), -margin(z, w, b), atol=1e-9)
    delta = h - z
    cos = (delta * w).sum(1) / (delta.norm(dim=1) * w.norm(dim=1))
    assert torch.allclose(cos.abs(), torch.ones(10, dtype=torch.float64), atol=1e-9)


def test_component_reflection_mirrors_about_the_mean():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(20, 6, generator=g, dtype=torch.float64)
    mean = z.mean(0)
    u = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    r = component_reflection(z, mean, u)
    assert torch.allclose(r[:, 1] - mean[1], -(z[:, 1] - mean[1]))
    assert torch.equal(r[:, [0, 2, 3, 4, 5]], z[:, [0, 2, 3, 4, 5]])
    assert torch.allclose(component_reflection(r, mean, u), z)


def test_probe_distillation_binary_and_multiclass():
    z, y, dirs = planted(n=600, d=10)
    labels = (y[:, 0] > 0.5).long()
    probe = distill_probe(z.float(), labels)
    assert probe.fidelity > 0.97 and probe.weight.shape == (2, 10)
    w, b = probe.pair(torch.zeros(600), torch.ones(600))
    # w . z + b > 0 where class 0 (the source) wins.
    assert ((margin(z.float(), w, b) > 0) == (probe.predict(z.float()) == 0)).all()
    three = (y[:, 0] * 3).long().clamp(max=2)
    probe3 = distill_probe(z.float(), three)
    assert probe3.weight.shape == (3, 10) and probe3.fidelity > 0.9
    with pytest.raises(ValueError, match="predicts only class"):
        distill_probe(z.float(), torch.zeros(600, dtype=torch.long))


def test_zero_boundary_means_nothing_to_cross():
    z = torch.randn(3, 4, dtype=torch.float64)
    z_cf, movable = boundary_inversion(z, torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    assert not movable.any() and torch.equal(z_cf, z)


def test_max_step_bounds_the_move_and_scale_is_the_coordinate_spread(tmp_path):
    z, y, dirs = planted(n=300, d=8)
    dic = ProcrustesDictionary(["a", "b"]).fit(z, y)
    torch.testing.assert_close(dic.scale_, dic.transform(z).std(0))
    dic.save(tmp_path / "d.safetensors")
    torch.testing.assert_close(Dictionary.load(tmp_path / "d.safetensors").scale_, dic.scale_)
    w = torch.randn(8, dtype=torch.float64)
    u = dic.components_[0]
    free, _ = boundary_inversion(z, w, u, 5.0)
    bounded, _ = boundary_inversion(z, w, u, 5.0, max_step=0.1)
    moves = ((bounded - z) @ u).abs()
    assert moves.max() <= 0.1 + 1e-12
    small = ((free - z) @ u).abs() <= 0.1
    torch.testing.assert_close(bounded[small], free[small])  # moves within the bound are untouched
