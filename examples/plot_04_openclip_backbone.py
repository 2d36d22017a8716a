"""
An OpenCLIP backbone from a local checkpoint
============================================

Load the image tower of an OpenCLIP model from a local model config and checkpoint as a frozen
backbone, check what its embedding encodes, train a classifier on it, and find the shortcut with
DiDAE's reflection math, directly in the embedding space.
"""

# %%
# A model config and a checkpoint
# -------------------------------
# OpenCLIP builds a model from a JSON config (``embed_dim``, ``vision_cfg``, ``text_cfg``). Its
# weights come from a local file, here a checkpoint in the layout of OpenCLIP's own training runs
# (``{"epoch": ..., "state_dict": {"module.visual...": ...}}``). So that the example runs offline, it
# writes both itself: a tiny vision transformer for 32x32 images with *random* weights. With a real
# model you pass a built-in architecture name (``"ViT-B-32"``) and a checkpoint you downloaded once.
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import open_clip
import torch

from didae_xai import registry
from didae_xai.benchmark.compare import CompareOptions, atom_plan, load_benchmark
from didae_xai.benchmark.presets import PRESETS
from didae_xai.dictionary import ProcrustesDictionary
from didae_xai.explain import boundary_inversion, distill_probe
from didae_xai.metrics import group_report
from didae_xai.models.training import PROBE_STUDENT, train_probe

folder = Path(tempfile.mkdtemp())
# The config's file name is the architecture's name.
config_path = folder / "tiny-square-vit.json"
vision = {"image_size": 32, "patch_size": 4, "width": 64, "layers": 2, "head_width": 32}
text = {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}
config = {"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}
config_path.write_text(json.dumps(config))
open_clip.add_model_config(config_path)
# open_clip logs a warning that the weights are random: here that is the point.
logging.getLogger().setLevel(logging.ERROR)
torch.manual_seed(0)
clip = open_clip.create_model("tiny-square-vit", pretrained=None)
checkpoint = folder / "epoch_1.pt"
state = {f"module.{k}": v for k, v in clip.state_dict().items()}
torch.save({"epoch": 1, "state_dict": state}, checkpoint)

# %%
# The backbone
# ------------
# ``registry.create("backbone", "open_clip", ...)`` builds the architecture from the config, keeps
# only the image tower, loads its weights from the checkpoint and freezes it. It takes images in
# ``[0, 1]`` and applies the model's own resizing and normalisation.
backbone = registry.create(
    "backbone", "open_clip", arch=config_path, weights=checkpoint
)
print(
    f"embedding_dim={backbone.embedding_dim}, image_size={backbone.image_size}, "
    f"{sum(p.numel() for p in backbone.parameters())} parameters"
)

# %%
# Does the embedding encode what we want to edit?
# -----------------------------------------------
# DiDAE edits along straight lines in the embedding space, so the attributes must be (close to)
# linear there. A Procrustes dictionary fitted on balanced Square images gives a quick check: the
# correlation of each atom's coordinate with its attribute, on balanced images it was not fitted on.
data = load_benchmark(CompareOptions(preset=PRESETS["smoke"].replace(n_generator=4000)))
# ColorA (the task), ColorB (the shortcut), PositionX, PositionY:
names = list(atom_plan(data).attributes)


def attributes(dataset):
    return torch.stack([dataset.factors[name] for name in names], 1)


fit_on = data.generator.select_split("train")
held_out = data.generator.select_split("test")
dictionary = ProcrustesDictionary(names=names).fit(
    backbone.embed(fit_on.float_images()), attributes(fit_on)
)
coordinates = dictionary.transform(backbone.embed(held_out.float_images()))
for k, name in enumerate(names):
    r = torch.corrcoef(
        torch.stack([coordinates[:, k].float(), held_out.factors[name]])
    )[0, 1]
    print(f"{name:10s} correlation with its atom's coordinate: {r:+.2f}")

# %%
# A randomly initialised ViT still encodes the background brightness well: it is the mean of almost
# every patch. The colour of a 4x4-pixel square and its position are encoded much less. A trained
# foundation model encodes all four. Run this check before training a diffusion autoencoder on a
# backbone: an attribute that the embedding does not encode cannot be edited.
#
# A classifier on the backbone
# ----------------------------
# A linear head trained on the poisoned training set. With the square's colour barely encoded, it
# has little choice but to use the background.
student, _ = train_probe(
    backbone,
    data.train,
    replace(PROBE_STUDENT, epochs=100),
    val=data.val,
    progress=False,
)
report = group_report(
    student.predict(data.test.float_images()), data.test.y, data.test.a
)
print(
    "test accuracy per group:",
    {g: round(a, 3) for g, a in report["group_accuracy"].items()},
)

# %%
# Counterfactuals in the embedding space
# --------------------------------------
# DiDAE's edits are pure functions of tensors (:mod:`didae_xai.explain`). Distil the classifier into
# a probe on the embedding (:func:`~didae_xai.explain.distill_probe`), then move each test embedding
# along one atom exactly across the probe's boundary (:func:`~didae_xai.explain.boundary_inversion`).
# This student is itself linear on the embedding, so its head tells exactly whether each edited
# embedding flips its decision. The only step missing is decoding the edits into images: that needs a
# diffusion autoencoder trained on this backbone, e.g.
# ``didae-xai train --backbone open_clip:tiny-square-vit.json --weights epoch_1.pt``.
probe = distill_probe(
    backbone.embed(data.train.float_images()),
    student.predict(data.train.float_images()),
)
print(f"probe fidelity: {probe.fidelity:.3f}")

x = data.test.float_images()
z = backbone.embed(x)
pred = student.predict(x)
target = 1 - pred
w, b = probe.pair(pred, target)
shift, flips = {}, {}
for k, name in enumerate(names):
    u = dictionary.components_[k].float()
    z_cf, _ = boundary_inversion(z, w, u, b)
    with torch.no_grad():
        flips[name] = (student.head(z_cf).argmax(1) == target).float().mean().item()
    # Length of the edit, in standard deviations of the data along the atom.
    shift[name] = ((z_cf - z) @ u).abs() / dictionary.scale_[k].float()
    print(
        f"{name:10s} flips the student on {flips[name]:.0%} of the test images; "
        f"median move {shift[name].median():.1f} standard deviations"
    )

# %%
# What matters is how *far* each edit has to go. Along ``ColorB`` the decision flips within the range
# the data covers: a realistic change of the background changes the prediction, which is the
# shortcut. Along the other atoms the probe's boundary lies tens of standard deviations away, far
# outside the data. There the probe no longer imitates the student (many of these edits do not flip
# it), and a decoder would produce something unlike any image of the data.
# ``DiDAE(..., max_shift=3.0)`` bounds every edit to three standard deviations for this reason.
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.boxplot([shift[name].clamp(max=1e3).numpy() for name in names], showfliers=False)
ax.set_xticks(range(1, len(names) + 1), names)
ax.set_yscale("log")
ax.axhline(3.0, color="tab:red", lw=1, ls="--")
ax.text(
    len(names) + 0.45,
    3.0,
    "3 std",
    color="tab:red",
    fontsize=7,
    va="bottom",
    ha="right",
)
ax.set_ylabel("length of the edit\n(std of the data along the atom)", fontsize=8)
ax.set_title(
    "Length of the edit that crosses the boundary, per atom (test images)", fontsize=9
)
fig.tight_layout()
