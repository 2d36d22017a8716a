"""
DiDAE beside DiME, FastDiME and ACE
===================================

Explain the same images of the same classifier with DiDAE and with the three gradient-based
diffusion counterfactual methods. All four drive the same diffusion UNet, so their speed and their
counterfactuals compare like for like.
"""

# %%
# Four explainers, one interface
# ------------------------------
# :class:`~didae_xai.baselines.DiME`, :class:`~didae_xai.baselines.FastDiME` and
# :class:`~didae_xai.baselines.ACE` steer a diffusion process with the classifier's gradients.
# DiDAE needs no gradient: it edits the embedding and decodes once per counterfactual. All four
# return a :class:`~didae_xai.explain.CounterfactualExplanation`. DiDAE gives one counterfactual per
# atom, the others one per image.
#
# To fit in a documentation build, the gradient methods run with *tiny* settings below, far cheaper
# than their published defaults (DiME and FastDiME: tau = 60 of 200 steps; ACE: 50 or more PGD
# iterations). ``didae-xai compare`` uses the published settings (its ``quick`` preset adds classifier
# scales 20, 30 and 50 after DiME's and FastDiME's published 8, 10, 15); see :doc:`/benchmarks`.
import time

import matplotlib.pyplot as plt

from didae_xai.baselines import ACE, DiME, FastDiME
from didae_xai.benchmark.compare import (
    CompareOptions,
    prepare_comparison,
)
from didae_xai.benchmark.presets import PRESETS
from didae_xai.data import balanced_indices, round_robin_order
from didae_xai.explain import DiDAE

# The gallery's shared tiny models, trained by the first example and
# loaded from the artifact store here.
run = prepare_comparison(
    CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None
)
data, models = run.data, run.models
dictionary = run.dictionaries["procrustes"]
student, autoencoder = models.students["probe"], models.autoencoder

explainers = {
    "DiDAE": DiDAE(student, autoencoder, dictionary, max_shift=3.0).fit(
        data.train.float_images()
    ),
    "DiME": DiME(student, autoencoder, tau=6, respacing=50, seed=0),
    "FastDiME": FastDiME(student, autoencoder, tau=20, respacing=50, warmup=10, seed=0),
    "ACE": ACE(student, autoencoder, iterations=10, steps=3, respacing=25, seed=0),
}

# %%
# Explain the same images
# -----------------------
# Eight balanced test images; each method first runs once on two images, so that the timed run is
# warm.
pick = balanced_indices(data.test.y, data.test.a, per_group=2, seed=3)
pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])]
x = data.test.subset(pick).float_images()

explanations, seconds = {}, {}
for name, explainer in explainers.items():
    explainer.explain(x[:2])
    start = time.perf_counter()
    explanations[name] = explainer.explain(x)
    seconds[name] = time.perf_counter() - start

print(
    f"{'method':10s} {'counterfactuals':>15s} {'seconds':>8s} {'cf/s':>7s} {'flip rate':>9s} {'images flipped':>14s}"
)
for name, exp in explanations.items():
    n_cf = exp.flipped.numel()
    print(
        f"{name:10s} {n_cf:15d} {seconds[name]:8.2f} {n_cf / seconds[name]:7.2f} "
        f"{exp.flipped.float().mean().item():9.2f} {exp.flipped.any(1).float().mean().item():14.2f}"
    )

# %%
# The counterfactuals side by side
# --------------------------------
# For DiDAE, the column shows the atom whose counterfactual gives the target class the highest
# probability (what ``attribute`` returns), with its name: each DiDAE counterfactual says which
# attribute it changed. The gradient methods change whatever pixels the classifier's gradient points
# to, and nothing names what changed.
fig, axes = plt.subplots(
    len(x),
    1 + len(explanations),
    figsize=(1.35 * (1 + len(explanations)), 1.35 * len(x)),
    squeeze=False,
)
for i in range(len(x)):
    axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
    for j, (name, exp) in enumerate(explanations.items(), start=1):
        k = int(exp.cf_target_confidence[i].argmax())
        axes[i, j].imshow(
            exp.counterfactuals[i, k].permute(1, 2, 0).numpy(), interpolation="nearest"
        )
        title = f"{exp.atom_names[k] + ' ' if name == 'DiDAE' else ''}{'flip' if exp.flipped[i, k] else 'no flip'}"
        axes[i, j].set_title(
            f"{name}\n{title}" if i == 0 else title,
            fontsize=6,
            color="tab:green" if exp.flipped[i, k] else "tab:gray",
        )
    for ax in axes[i]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_title("factual", fontsize=6)
fig.tight_layout()
