"""Running benchmarks: the trained artifacts they share."""

from didae_xai.benchmark.artifacts import SquareArtifacts, load_artifacts

__all__ = ["SquareArtifacts", "load_artifacts"]
