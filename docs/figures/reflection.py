"""Boundary inversion along atoms vs component reflection, on a toy 2-D embedding space.

The points are computed with the library's own pure functions (didae_xai.explain.reflections).
"""

import matplotlib.pyplot as plt
import torch

from didae_xai.explain import (
    boundary_inversion,
    component_reflection,
    householder_reflection,
    margin,
)

w, b = (
    torch.tensor([1.0, 1.6]),
    torch.tensor(-1.0),
)  # the distilled probe: margin m(z) = w . z + b
atoms = {"u_task": torch.tensor([1.0, 0.0]), "u_shortcut": torch.tensor([0.0, 1.0])}
colors = {"u_task": "tab:red", "u_shortcut": "tab:blue"}
z = torch.tensor([[1.2, 0.6]])
mean = torch.tensor([0.2, 0.2])

fig, axes = plt.subplots(1, 2, figsize=(8.4, 4))
grid = torch.linspace(-2.2, 3.2, 2)


def line(ax, value, **style):
    """The points with margin ``value``: w . z + b = value."""
    ax.plot(grid, (value - b - w[0] * grid) / w[1], **style)


def move(ax, z_new, color, label):
    """An arrow from the factual ``z`` to ``z_new``, with a dot and a label at its end."""
    ax.annotate("", xy=tuple(z_new[0]), xytext=tuple(z[0]), arrowprops=dict(arrowstyle="-|>", color=color, lw=2))
    ax.scatter(*z_new[0], color=color, zorder=3)
    ax.annotate(label, z_new[0] + torch.tensor([0.08, -0.25]), color=color, fontsize=8)


ax = axes[0]
m = float(margin(z, w, b))
ax.fill_between(grid, (-b - w[0] * grid) / w[1], 4, color="tab:orange", alpha=0.08)
line(ax, 0.0, color="black", lw=1.5, label="decision boundary  m(z) = 0")
line(ax, -m, color="0.5", lw=1, ls="--", label="mirrored margin  m(z') = -m(z)")
ax.scatter(*z[0], color="black", zorder=3)
ax.annotate("z", z[0] + torch.tensor([0.08, 0.08]), fontsize=10)
for name, u in atoms.items():
    z_cf, _ = boundary_inversion(z, w, u, b, lam=2.0)
    move(ax, z_cf, colors[name], f"z' along {name}")
z_h = householder_reflection(z, w, b)
ax.annotate(
    "",
    xy=tuple(z_h[0]),
    xytext=tuple(z[0]),
    arrowprops=dict(arrowstyle="-|>", color="0.4", lw=1, ls=":"),
)
ax.annotate(
    "along w (entangled)", z_h[0] + torch.tensor([-1.3, -0.3]), color="0.4", fontsize=7
)
ax.text(2.1, 2.6, "source class", fontsize=8, color="tab:orange")
ax.set_title("DiDAE: boundary inversion, one counterfactual per atom", fontsize=9)

ax = axes[1]
g = torch.Generator().manual_seed(1)
cloud = mean + torch.randn(200, 2, generator=g) * torch.tensor([0.9, 0.6])
ax.scatter(
    cloud[:, 0],
    cloud[:, 1],
    s=5,
    color="0.75",
    edgecolors="none",
    label="embeddings of the data",
)
ax.scatter(*mean, marker="x", color="black", zorder=3)
ax.annotate("mean", mean + torch.tensor([0.08, -0.25]), fontsize=8)
ax.scatter(*z[0], color="black", zorder=3)
ax.annotate("z", z[0] + torch.tensor([0.08, 0.08]), fontsize=10)
for name, u in atoms.items():
    move(ax, component_reflection(z, mean, u), colors[name], f"reflect {name}")
ax.set_title("Component reflection about the mean (no classifier)", fontsize=9)

for ax in axes:
    ax.set_xlim(-2.2, 3.2)
    ax.set_ylim(-1.8, 3.0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="lower left")
fig.tight_layout()
