"""
Correct a shortcut with CFKD
============================

Counterfactual knowledge distillation: explain the poisoned student, let a teacher mark the
Clever-Hans counterfactuals, retrain on them with their original labels, and compare the group
accuracies before and after. Projecting the shortcut atom out of the features is shown beside it.
"""

# %%
# The student and its explainer
# -----------------------------
# The poisoned linear-probe student of the first example, and DiDAE with the Procrustes dictionary
# (edits bounded to three standard deviations of the data, as in the quickstart).
import matplotlib.pyplot as plt
import numpy as np

from didae_xai.benchmark.compare import (
    CompareOptions,
    prepare_comparison,
)
from didae_xai.benchmark.presets import PRESETS
from didae_xai.correct import (
    CFKD,
    CorrectionData,
    PreclusteredTeacher,
    Projection,
    correct_and_evaluate,
    evaluate,
)
from didae_xai.explain import DiDAE

# The gallery's shared tiny models, trained by the first example and
# loaded from the artifact store here.
run = prepare_comparison(
    CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None
)
data, models = run.data, run.models
dictionary = run.dictionaries["procrustes"]
student = models.students["probe"]
explainer = DiDAE(student, models.autoencoder, dictionary, max_shift=3.0).fit(
    data.train.float_images()
)

# %%
# The correctors
# --------------
# :class:`~didae_xai.correct.PreclusteredTeacher` needs one decision from a person: which atoms are
# legitimate reasons to change the class. Here only ``ColorA`` (the square's colour) is; every flip
# along another atom is a Clever-Hans flip. CFKD explains up to 64 correctly classified training
# images, keeps the counterfactuals the teacher calls "false" with their *original* label, and
# retrains the student's head on a 50/50 mix of them and the real training data.
#
# :class:`~didae_xai.correct.Projection` removes the ``ColorB`` atom from the student's features
# instead: no retraining at all.
correction_data = CorrectionData.from_benchmark(data)
before = evaluate(student, data.test)
cfkd = CFKD(
    explainer,
    PreclusteredTeacher(true_atoms=("ColorA",)),
    max_factuals=64,
    seed=0,
    progress=False,
)
rows = {
    "student": before,
    "CFKD": correct_and_evaluate(
        cfkd, student, correction_data, data.test, baseline_aga=before["aga"]
    ),
    "projection": correct_and_evaluate(
        Projection(dictionary=dictionary, atoms=("ColorB",)),
        student,
        correction_data,
        data.test,
        baseline_aga=before["aga"],
    ),
}
for name, row in rows.items():
    groups = " ".join(f"{g} {acc:.3f}" for g, acc in row["group_accuracy"].items())
    gain = "" if row.get("gain") is None else f"  Gain {row['gain']:.3f}"
    print(f"{name:10s} {groups}  AGA {row['aga']:.3f}  WGA {row['wga']:.3f}{gain}")

# %%
# What CFKD did: how many counterfactuals it made, the teacher's verdicts, and how many it trained on.
record = rows["CFKD"]["record"]
print("counterfactuals:", record["n_counterfactuals"], "verdicts:", record["verdicts"])
print(
    "trained on:",
    record["n_train_counterfactuals"],
    "'false' counterfactuals; labels used:",
    rows["CFKD"]["labels_used"],
)

# %%
# Group accuracies before and after
# ---------------------------------
# Groups ``g = 2y + a``: g1 and g2 are the majority groups of the poisoned training set, g0 and g3
# the minority groups where the background contradicts the square.
names = list(rows)
groups = list(before["group_accuracy"])
width = 0.8 / len(names)
fig, ax = plt.subplots(figsize=(6, 3.2))
for k, name in enumerate(names):
    values = [rows[name]["group_accuracy"][g] for g in groups]
    ax.bar(
        np.arange(len(groups)) + (k - (len(names) - 1) / 2) * width,
        values,
        width,
        label=name,
    )
ax.set_xticks(
    np.arange(len(groups)),
    [f"{g}\n(y={int(g[1]) // 2}, a={int(g[1]) % 2})" for g in groups],
)
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1.05)
ax.legend(
    fontsize=8,
    ncol=len(names),
    loc="lower center",
    bbox_to_anchor=(0.5, 1.0),
    frameon=False,
)
fig.tight_layout()

# %%
# Some of the counterfactuals CFKD trained on: the student changed its mind, the teacher says the
# true class did not change, so each is added with the label of its factual.
cf_data = cfkd.counterfactual_dataset_
if cf_data is not None and len(cf_data):
    n = min(8, len(cf_data))
    fig, axes = plt.subplots(1, n, figsize=(1.2 * n, 1.5), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(
            cf_data.images[i].permute(1, 2, 0).numpy(), interpolation="nearest"
        )
        axes[0, i].set_title(
            "label: " + ("bright" if cf_data.y[i] else "dark"), fontsize=7
        )
        axes[0, i].axis("off")
    fig.suptitle("'False' counterfactuals, kept with their original label", fontsize=8)
    fig.tight_layout()
