"""The DiDAE explainer's API contract on a tiny (untrained) autoencoder: shapes, targets, errors."""

import json

import matplotlib.pyplot as plt
import pytest
import torch

from didae_xai.dictionary import SVDDictionary
from didae_xai.explain import CounterfactualExplanation, DiDAE, resolve_target
from tiny import SIZE, RedRule, images, tiny_didae

@pytest.fixture(scope="module")
def explainer():
    return tiny_didae(RedRule())


def test_explain_shapes_and_consistency(explainer):
    x = images(5, seed=2)
    exp = explainer.explain(x)
    assert isinstance(exp, CounterfactualExplanation)
    assert exp.counterfactuals.shape == (5, 3, 3, SIZE, SIZE)
    assert exp.counterfactuals.min() >= 0 and exp.counterfactuals.max() <= 1
    assert exp.atom_names == ["red", "green", "blue"] and exp.atoms == [0, 1, 2]
    pred = RedRule()(x).argmax(1)
    assert torch.equal(exp.factual_pred, pred) and torch.equal(exp.target, 1 - pred)
    assert torch.equal(exp.flipped, exp.cf_pred == exp.target[:, None])
    assert exp.timings["cf_per_s"] > 0 and exp.timings["total_s"] > 0
    json.dumps(exp.to_dict())
    assert 0 < explainer.probe.fidelity <= 1


def test_counterfactual_embeddings_mirror_the_probe_along_each_atom(explainer):
    z = explainer.autoencoder.embed(images(6, seed=3))
    src = explainer.probe.predict(z)
    z_cf, movable = explainer.counterfactual_embeddings(z, src, 1 - src)
    w, b = explainer.probe.pair(src, 1 - src)
    before = (z * w).sum(1) + b
    for k in range(3):
        after = (z_cf[:, k] * w).sum(1) + b
        torch.testing.assert_close(after[movable[:, k]], -before[movable[:, k]], atol=1e-3, rtol=1e-3)


def test_captum_target_forms_agree(explainer):
    x = images(4, seed=4)
    by_int = explainer.explain(x, target=1)
    by_list = explainer.explain(x, target=[1, 1, 1, 1])
    by_tensor = explainer.explain(x, target=torch.ones(4, dtype=torch.long))
    assert by_int.target.tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(by_int.counterfactuals, by_list.counterfactuals)
    torch.testing.assert_close(by_int.counterfactuals, by_tensor.counterfactuals)
    with pytest.raises(ValueError, match="one class per input"):
        explainer.explain(x, target=[0, 1])
    assert resolve_target(torch.tensor(0), 3, torch.ones(3)).tolist() == [0, 0, 0]


def test_attribute_is_shaped_like_inputs_and_batch_independent(explainer):
    x = images(6, seed=5)
    attr = explainer.attribute(x, target=1)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    chunked = explainer.attribute(x, target=1, internal_batch_size=4)
    torch.testing.assert_close(attr, chunked, atol=1e-5, rtol=1e-4)
    one_atom = explainer.attribute(x, target=1, atom="green")
    exp = explainer.explain(x, target=1, atoms=["green"])
    torch.testing.assert_close(one_atom, exp.counterfactuals[:, 0] - x)


def test_attribute_inside_captum_visualization(explainer):
    from captum.attr import visualization as viz

    x = images(1, seed=6)
    attr = explainer.attribute(x, target=0)
    fig, ax = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), method="blended_heat_map",
        sign="all", use_pyplot=False,
    )
    assert fig is not None
    plt.close(fig)


def test_plot_save_and_reflect(explainer, tmp_path):
    x = images(3, seed=7)
    exp = explainer.explain(x)
    fig = exp.plot()
    assert len(fig.axes) == 3 * 4
    assert fig.axes[1].get_title().startswith("red")
    plt.close(fig)
    exp.save(tmp_path / "exp")
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"images.safetensors", "explanation.json", "grid.png"}
    assert json.loads((tmp_path / "exp" / "explanation.json").read_text())["atom_names"] == ["red", "green", "blue"]
    reflected = explainer.reflect(x, "blue")
    assert reflected.shape == x.shape and 0 <= reflected.min() and reflected.max() <= 1


def test_line_search_keeps_smallest_flipping_strength(explainer):
    x = images(4, seed=8)
    ls = DiDAE(explainer.model, explainer.autoencoder, explainer.dictionary, explainer.probe, line_search=[0.5, 1.0, 2.0, 4.0])
    exp = ls.explain(x)
    assert exp.counterfactuals.shape == (4, 3, 3, SIZE, SIZE)
    assert torch.equal(exp.flipped, exp.cf_pred == exp.target[:, None])
    with pytest.raises(ValueError, match="ascending"):
        DiDAE(explainer.model, explainer.autoencoder, explainer.dictionary, line_search=[2.0, 1.0])


def test_clear_errors(explainer):
    with pytest.raises(ValueError, match="16x16 images, got 32x32"):
        explainer.explain(torch.rand(2, 3, 32, 32))
    other = SVDDictionary(2).fit(torch.randn(20, 7))
    with pytest.raises(ValueError, match="7-d embeddings"):
        DiDAE(explainer.model, explainer.autoencoder, other)
    fresh = DiDAE(explainer.model, explainer.autoencoder, explainer.dictionary)
    with pytest.raises(RuntimeError, match="call fit"):
        fresh.explain(images(2))


def test_max_shift_keeps_moves_within_the_data_spread(explainer):
    bounded = DiDAE(explainer.model, explainer.autoencoder, explainer.dictionary, explainer.probe, max_shift=0.5)
    z = explainer.autoencoder.embed(images(6, seed=9))
    src = explainer.probe.predict(z)
    z_cf, _ = bounded.counterfactual_embeddings(z, src, 1 - src)
    dic = explainer.dictionary
    moves = (dic.transform(z_cf.reshape(-1, z.shape[1])) - dic.transform(z).repeat_interleave(3, 0)).abs()
    limit = 0.5 * dic.scale_
    assert (moves <= limit + 1e-4).all()
    with pytest.raises(ValueError, match="max_shift must be positive"):
        DiDAE(explainer.model, explainer.autoencoder, dic, explainer.probe, max_shift=0)
