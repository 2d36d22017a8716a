"""CFKD: counterfactuals of the student, verdicts of a teacher, retraining on the Clever-Hans ones."""

import math

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

steps = [
    ("poisoned student", "a classifier that learned\na shortcut", "#f2f2f2"),
    (
        "explain",
        "DiDAE: K counterfactuals per\ncorrectly classified training image",
        "#e5f5e0",
    ),
    (
        "teacher verdict",
        "oracle classifier, or pre-clustered:\none verdict per atom (person labels K atoms)",
        "#dbe9f6",
    ),
    (
        "keep 'false' ones",
        "student flipped, true class did not:\nadd them with the ORIGINAL label",
        "#fde3cf",
    ),
    (
        "retrain",
        "50/50 mix with real data: head only\n(FM probe) or fine-tune (ResNet)",
        "#efe5f7",
    ),
]

fig, ax = plt.subplots(figsize=(8.4, 4.6))
ax.set_xlim(-2.25, 2.25)
ax.set_ylim(-1.35, 1.35)
ax.set_aspect("equal")
ax.axis("off")
radius_x, radius_y, centres = 1.55, 1.0, []
for i, (title, text, color) in enumerate(steps):
    angle = math.pi / 2 - 2 * math.pi * i / len(steps)
    x, y = radius_x * math.cos(angle), radius_y * math.sin(angle)
    centres.append((x, y))
    ax.add_patch(
        FancyBboxPatch(
            (x - 0.6, y - 0.2), 1.2, 0.4, boxstyle="round,pad=0.03", fc=color, ec="0.3"
        )
    )
    ax.text(x, y + 0.08, title, ha="center", va="center", fontsize=9, weight="bold")
    ax.text(x, y - 0.08, text, ha="center", va="center", fontsize=6)


def on_ellipse(angle):
    return radius_x * math.cos(angle), radius_y * math.sin(angle)


# Arrows run along the ellipse from just after one box to just before the next.
gap = 0.42
for i in range(len(steps)):
    start = math.pi / 2 - 2 * math.pi * i / len(steps) - gap
    end = math.pi / 2 - 2 * math.pi * (i + 1) / len(steps) + gap
    ax.add_patch(
        FancyArrowPatch(
            on_ellipse(start),
            on_ellipse(end),
            connectionstyle="arc3,rad=-0.2",
            arrowstyle="-|>",
            mutation_scale=14,
            color="0.35",
        )
    )
ax.text(
    0,
    0,
    "one round of\nCounterfactual Knowledge\nDistillation",
    ha="center",
    va="center",
    fontsize=9,
    style="italic",
)
fig.tight_layout()
