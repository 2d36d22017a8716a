"""
What does each atom encode? A reflection atlas
==============================================

Mirror images along each dictionary atom with :meth:`DiDAE.reflect <didae_xai.explain.DiDAE.reflect>`
and decode them: a picture of what every atom of the Procrustes and the SVD dictionary changes,
with no classifier involved.
"""

# %%
# Component reflection takes an image's embedding ``z``, mirrors its coordinate along one atom
# ``u`` about the data mean, ``z' = z - 2 ((z - mean) . u) u``, and decodes ``z'`` from the image's
# own inverted noise. Only that one coordinate changes, so the decoded difference shows what the atom
# means to the autoencoder.
import matplotlib.pyplot as plt

from didae_xai.benchmark.compare import (
    CompareOptions,
    prepare_comparison,
)
from didae_xai.benchmark.presets import PRESETS
from didae_xai.data import balanced_indices
from didae_xai.explain import DiDAE
from didae_xai.metrics import square_oracle_latent

# The gallery's shared tiny models, trained by the first example and
# loaded from the artifact store here.
run = prepare_comparison(
    CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None
)
data, models = run.data, run.models
dictionaries = run.dictionaries

# One test image per group.
pick = balanced_indices(data.test.y, data.test.a, per_group=1, seed=1)
factuals = data.test.subset(pick)
x = factuals.float_images()


def atlas(dictionary, title):
    """Rows: images. Columns: the factual, its reconstruction, then one reflection per atom."""
    explainer = DiDAE(
        models.students["probe"], models.autoencoder, dictionary
    )  # reflect needs no probe
    columns = [("factual", x), ("reconstruction", models.autoencoder.reconstruct(x))]
    columns += [
        (f"reflect {name}", explainer.reflect(x, name)) for name in dictionary.names_
    ]
    fig, axes = plt.subplots(
        len(x),
        len(columns),
        figsize=(1.3 * len(columns), 1.3 * len(x) + 0.4),
        squeeze=False,
    )
    for j, (name, images) in enumerate(columns):
        for i in range(len(x)):
            axes[i, j].imshow(
                images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest"
            )
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return columns


# %%
# The Procrustes atoms
# --------------------
# Supervised by the attribute values, each atom carries a name. Mirroring ``ColorB`` turns a dark
# background bright and a bright one dark. The square's atoms change the images less, and less
# cleanly: ``ColorA`` barely alters the square, and the position atoms sometimes move it and
# sometimes leave a faint second square. The square covers 16 of the 1024 pixels, and the gallery's
# briefly trained autoencoder renders it only roughly (``didae-xai compare`` trains it longer).
columns = atlas(
    dictionaries["procrustes"], "Procrustes dictionary: one reflection per atom"
)

# %%
# Square knows where the square is, so the red intensity inside it and the background brightness
# outside it can be read from any decoded image (:func:`~didae_xai.metrics.square_oracle_latent`).
# The mean absolute change each reflection makes to the two, compared with the reconstruction,
# measures what each atom changes:
reference = square_oracle_latent(columns[1][1], factuals.masks)
for name, images in columns[2:]:
    change = (square_oracle_latent(images, factuals.masks) - reference).abs().mean(0)
    print(f"{name:18s} square red {change[0]:.2f}   background {change[1]:.2f}")

# %%
# The SVD atoms
# -------------
# Unsupervised: the top principal directions of the embeddings, named ``pc0``, ``pc1``, ... in
# order of variance. Their reflections show what they encode; name them after looking
# (``dictionary.names_`` may be set).
columns = atlas(
    dictionaries["svd"], "SVD dictionary: one reflection per principal direction"
)
