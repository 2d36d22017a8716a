"""Disentangled dictionaries in embedding space: Procrustes (supervised) and SVD (unsupervised)."""

from didae_xai.dictionary.base import Dictionary
from didae_xai.dictionary.procrustes import ProcrustesDictionary
from didae_xai.dictionary.svd import SVDDictionary

__all__ = ["Dictionary", "ProcrustesDictionary", "SVDDictionary"]
