"""How DiDAE makes a counterfactual: encode, edit the embedding along one atom, decode."""

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

fig, ax = plt.subplots(figsize=(8.4, 3.1))
ax.set_xlim(0, 10.5)
ax.set_ylim(0, 4)
ax.axis("off")


def box(x, y, text, color, w=1.9, h=0.8):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, ec="0.3"
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def arrow(start, end, text=None, offset=(0, 0.18)):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.3),
    )
    if text:
        ax.text(
            (start[0] + end[0]) / 2 + offset[0],
            (start[1] + end[1]) / 2 + offset[1],
            text,
            ha="center",
            fontsize=7,
        )


box(0.9, 2, "image x", "white", w=1.3)
box(3.1, 3.1, "frozen encoder\n(timm / OpenCLIP)", "#dbe9f6")
box(3.1, 0.9, "DDIM inversion\n(conditioned on z)", "#fde3cf")
box(5.6, 3.1, "edit along atom u_k\nz' = z - λ s_k u_k", "#e5f5e0", w=2.2)
box(8.3, 2, "DDIM decoder\n(UNet, conditioned on z')", "#fde3cf", w=2.2)
box(8.3, 0.6, "counterfactual x'_k", "white", w=1.9, h=0.6)
arrow((1.55, 2.2), (2.15, 2.95))
arrow((1.55, 1.8), (2.15, 1.05))
arrow((4.05, 3.1), (4.5, 3.1), "z")
arrow((6.7, 2.9), (7.4, 2.4), "z'")
arrow((4.05, 0.9), (7.2, 1.75), "x_T (shared by all K edits)", offset=(0, -0.42))
arrow((8.3, 1.6), (8.3, 0.9))
arrow((3.1, 2.7), (3.1, 1.3), "z", offset=(0.18, 0))
ax.text(
    5.6,
    3.85,
    "no gradients: one batched decode per counterfactual",
    ha="center",
    fontsize=8,
    style="italic",
)
fig.tight_layout()
