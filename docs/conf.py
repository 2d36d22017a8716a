"""Sphinx configuration of the didae-xai documentation.

The gallery (``examples/plot_*.py``) is executed on every build. The examples train tiny Square models
once and cache them in an artifact store under ``_build/didae_xai_home`` (set ``DIDAE_XAI_DOCS_HOME``
to keep the store elsewhere, e.g. across clean builds).
"""

from __future__ import annotations

import os
from pathlib import Path

DOCS = Path(__file__).resolve().parent

# Nothing is downloaded at build time, and the examples share one artifact store.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DIDAE_XAI_HOME"] = os.environ.get(
    "DIDAE_XAI_DOCS_HOME", str(DOCS / "_build" / "didae_xai_home")
)

import torch  # noqa: E402
import tqdm  # noqa: E402
import tqdm.auto  # noqa: E402


class _QuietProgress(tqdm.tqdm):
    """Training loops show tqdm progress bars; in the built pages they would only be noise."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# Replaced before any didae_xai module imports tqdm, so that the examples' output stays readable.
tqdm.tqdm = tqdm.auto.tqdm = _QuietProgress

import didae_xai  # noqa: E402

# The examples run inside this process: two threads, the size of the machines the docs are built on.
torch.set_num_threads(min(2, torch.get_num_threads()))

project = "didae-xai"
author = "didae-xai developers"
copyright = "2026, didae-xai developers"
release = didae_xai.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "sphinxcontrib.typer",
    "matplotlib.sphinxext.plot_directive",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme = "furo"
html_title = f"didae-xai {release}"

# -- autodoc / napoleon ------------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = (
    True  # the Zennit adapter follows Zennit's own (numpy) docstring style
)
napoleon_use_ivar = (
    True  # "Attributes:" as fields, so dataclass fields are not documented twice
)
napoleon_use_rtype = False

# -- matplotlib plot directive (the concept figures in figures/) -------------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 150)]
plot_rcparams = {"font.size": 10}

# -- sphinx-gallery ----------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",  # plot_01_ trains the shared models, the rest reuse them
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("didae_xai", "didae_xai_plugins"),
    "image_scrapers": ("matplotlib",),
    "remove_config_comments": True,
    "min_reported_time": 0,
    "show_memory": False,
    "download_all_examples": False,
}
