"""Classifiers: end-to-end timm networks and linear probes on frozen backbones, and their training."""

from didae_xai.models.classifiers import (
    Classifier,
    ProbeClassifier,
    TimmClassifier,
    load_classifier,
    save_classifier,
)

__all__ = ["Classifier", "ProbeClassifier", "TimmClassifier", "load_classifier", "save_classifier"]
