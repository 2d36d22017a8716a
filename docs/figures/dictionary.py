"""Procrustes vs SVD atoms on a toy 2-D embedding space, computed with the library's own dictionaries."""

import matplotlib.pyplot as plt
import torch

from didae_xai.dictionary import ProcrustesDictionary, SVDDictionary

# Two attributes whose directions in the embedding space are neither orthogonal nor of equal spread.
g = torch.Generator().manual_seed(0)
Y = torch.rand(400, 2, generator=g)
directions = torch.tensor(
    [[1.0, 0.35], [0.55, 1.0]]
)  # rows: how each attribute moves z
Z = ((Y - 0.5) * torch.tensor([2.0, 1.0])) @ directions + 0.06 * torch.randn(
    400, 2, generator=g
)

procrustes = ProcrustesDictionary(names=["ColorA", "ColorB"]).fit(Z, Y)
svd = SVDDictionary(n_components=2).fit(Z)
mean = procrustes.mean_.float()
M = (Y - Y.mean(0)).T.double() @ (
    Z.double() - Z.double().mean(0)
)  # attribute-embedding covariances

fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
for ax, title in zip(axes, ("Procrustes (supervised)", "SVD (unsupervised)")):
    ax.scatter(Z[:, 0], Z[:, 1], c=Y[:, 0], cmap="Reds", s=8, edgecolors="none")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-2.0, 2.0)
    ax.set_ylim(-1.4, 1.6)
    ax.set_xlabel("embedding dimension 1", fontsize=8)
    ax.set_ylabel("embedding dimension 2", fontsize=8)


def arrow(ax, vector, color, label, style="-"):
    v = vector / vector.norm() * 0.9
    tip = (float(mean[0] + v[0]), float(mean[1] + v[1]))
    ax.annotate(
        "",
        xy=tip,
        xytext=(float(mean[0]), float(mean[1])),
        arrowprops=dict(arrowstyle="-|>", color=color, lw=2, linestyle=style),
    )
    # The label sits just beyond the tip, on the side the arrow points to.
    ax.annotate(
        label,
        xy=tip,
        xytext=(14 * float(v[0]), 14 * float(v[1])),
        textcoords="offset points",
        color=color,
        fontsize=7,
        ha="left" if v[0] >= 0 else "right",
        va="bottom" if v[1] >= 0 else "top",
    )


for k, name in enumerate(procrustes.names_):
    arrow(axes[0], M[k].float(), "0.55", f"{name} direction", style="--")
    arrow(
        axes[0],
        procrustes.components_[k].float(),
        ("tab:red", "tab:blue")[k],
        f"atom {name}",
    )
for k, name in enumerate(svd.names_):
    arrow(
        axes[1],
        svd.components_[k].float(),
        ("tab:purple", "tab:green")[k],
        f"atom {name}",
    )
axes[0].text(0.02, 0.02, "colour: ColorA", transform=axes[0].transAxes, fontsize=7)
fig.tight_layout()
