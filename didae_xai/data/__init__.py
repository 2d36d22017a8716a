"""Datasets: Square (synthetic, with ground truth), any metadata-CSV image folder, CelebA."""

from didae_xai.data import celeba, metadata_csv, square
from didae_xai.data.base import SPLITS, BenchmarkData, ImageDataset, concat
from didae_xai.data.celeba import celeba_benchmark
from didae_xai.data.metadata_csv import load_image_folder, metadata_benchmark, save_image_folder
from didae_xai.data.poisoning import balanced_indices, group_quotas, poison_indices, round_robin_order
from didae_xai.data.square import square_benchmark, square_dataset

__all__ = [
    "SPLITS",
    "BenchmarkData",
    "ImageDataset",
    "balanced_indices",
    "celeba",
    "celeba_benchmark",
    "concat",
    "group_quotas",
    "load_image_folder",
    "metadata_benchmark",
    "metadata_csv",
    "poison_indices",
    "round_robin_order",
    "save_image_folder",
    "square",
    "square_benchmark",
    "square_dataset",
]
