"""Running benchmarks: presets, the artifact store, the ``compare`` runner and its report."""

from didae_xai.benchmark.artifacts import SquareArtifacts, load_artifacts
from didae_xai.benchmark.compare import CompareOptions, Comparison, prepare_comparison, run_compare
from didae_xai.benchmark.presets import PRESETS, ComparePreset, get_preset
from didae_xai.benchmark.store import ArtifactStore

__all__ = [
    "PRESETS",
    "ArtifactStore",
    "CompareOptions",
    "ComparePreset",
    "Comparison",
    "SquareArtifacts",
    "get_preset",
    "load_artifacts",
    "prepare_comparison",
    "run_compare",
]
