"""
Quickstart: explain a classifier with DiDAE
===========================================

Train (or reuse) tiny Square models, then explain a poisoned classifier with DiDAE: one
counterfactual per dictionary atom, each labelled with the attribute it changed.
"""

# %%
# The Square benchmark
# --------------------
# Each image shows a grey frame holding a small square whose red channel is the *task*
# (``ClassA``: bright or dark square), on a background whose brightness is the *confounder*
# (``ClassB``). In the poisoned training set, 98% of the images pair a bright square with a dark
# background or a dark square with a bright background. A classifier can therefore reach 98%
# training accuracy by looking at the background alone: a "Clever Hans" shortcut.
import matplotlib.pyplot as plt
import torch
from rich.console import Console

from didae_xai.benchmark.compare import (
    CompareOptions,
    atom_plan,
    fit_dictionaries,
    load_benchmark,
)
from didae_xai.benchmark.models import prepare_models
from didae_xai.benchmark.presets import PRESETS
from didae_xai.benchmark.store import ArtifactStore
from didae_xai.data import balanced_indices, round_robin_order
from didae_xai.explain import DiDAE
from didae_xai.metrics import group_report

# The tiny models the gallery shares: the ``tiny`` preset (the ``smoke`` sizes with
# more data, more epochs and 600 autoencoder steps). The artifact store finds them by
# the hash of this config: the first example trains them, every other one loads them.
preset = PRESETS["tiny"]
options = CompareOptions(preset=preset, students=("probe",))
data = load_benchmark(options)

print("poisoned training set, images per group g = 2y + a:", data.train.group_counts())
print("balanced test set:", data.test.group_counts())

fig, axes = plt.subplots(1, 4, figsize=(6, 1.9))
for g, ax in enumerate(axes):
    i = int(torch.nonzero(data.train.groups == g)[0])
    ax.imshow(data.train.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(
        f"g{g}: square {'bright' if g // 2 else 'dark'}\nbackground {'bright' if g % 2 else 'dark'}",
        fontsize=7,
    )
    ax.axis("off")
fig.suptitle(
    "The four groups (g1 and g2 hold 98% of the poisoned training set)", fontsize=8
)
fig.tight_layout()

# %%
# The models
# ----------
# :func:`~didae_xai.benchmark.models.prepare_models` trains what the store lacks: a ResNet-18
# "foundation model" on balanced data (its pooled features are the embedding ``z``), the *student*
# (a linear probe on ``z`` trained on the poisoned set) and the diffusion autoencoder that decodes
# ``z`` back into images. On the first run this takes a few minutes on two CPU cores.
models = prepare_models(
    data,
    options.data_key(),
    preset,
    ArtifactStore(),
    options.students,
    need_teacher=False,
    log=Console(width=110).print,
)
student = models.students["probe"]
autoencoder = models.autoencoder

# %%
# The student learned the shortcut: it is nearly always right on the two majority groups and much
# worse on the minority groups (g0, g3), where the background disagrees with the square.
report = group_report(
    student.predict(data.test.float_images()), data.test.y, data.test.a
)
print(
    {g: round(acc, 3) for g, acc in report["group_accuracy"].items()},
    "AGA",
    round(report["aga"], 3),
)

# %%
# A dictionary of attribute directions
# ------------------------------------
# The Procrustes dictionary fits one orthonormal direction (atom) per attribute in the
# embedding space, from embeddings and attribute values of balanced images: red intensity of the
# square (``ColorA``), background brightness (``ColorB``) and the square's position.
dictionaries = fit_dictionaries(autoencoder, data, atom_plan(data))
dictionary = dictionaries["procrustes"]
print(dictionary)

# %%
# Explain
# -------
# :class:`~didae_xai.explain.DiDAE` distils the student into a linear probe on ``z`` (``fit``),
# then, for every image and every atom, moves ``z`` along that atom across the probe's decision
# boundary and decodes the result. No gradients, one batched decode per counterfactual.
#
# ``max_shift=3.0`` bounds every move to three standard deviations of the data along the atom. An atom
# whose boundary lies further away is moved that far and no further, so the counterfactual stays an
# image like those in the data and is reported as not flipping. Without it (the paper's unbounded
# reflection) such atoms often decode to noise-like images.
explainer = DiDAE(
    student, autoencoder, dictionary, class_names=["dark", "bright"], max_shift=3.0
)
explainer.fit(data.train.float_images())
print(f"probe fidelity: {explainer.probe.fidelity:.3f}")

# Two test images of each group, in the order g0, g1, g2, g3, g0, ...
pick = balanced_indices(data.test.y, data.test.a, per_group=2, seed=0)
pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])]
x = data.test.subset(pick).float_images()

explanation = explainer.explain(x)
fig = explanation.plot(max_rows=8)

# %%
# Each row is a test image; each column moves it along one atom and shows the student's new
# prediction. A green title marks a flip. The flips along ``ColorB`` change the background, not the
# square, yet the student changes its mind: the explanation exposes the shortcut. The flip rate per
# atom sums this up:
print({atom: round(rate, 2) for atom, rate in explanation.flip_rate_by_atom().items()})
# Speed of this first (cold) call; ``didae-xai compare`` measures a warm batch.
print(f"{explanation.timings['cf_per_s']:.1f} counterfactuals per second")
