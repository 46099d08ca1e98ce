"""Datasets: scikit-learn's digits, synthetic patterns, ImageNet-layout folders, and the
Parquet shards ``sqz data prepare`` makes of them (on local disk or S3).

``data_url`` names the source:

- ``digits`` or ``synthetic``: built in, held in memory (:mod:`sqz.data.builtin`);
- a folder in the ILSVRC2012 layout (:mod:`sqz.data.imagenet`);
- a prepared dataset: a folder or ``s3://`` prefix holding ``dataset.json`` and
  ``<split>/part-*.parquet`` (:mod:`sqz.data.parquet`, written by :mod:`sqz.data.prepare`).

Images are decoded (a JPEG at a reduced DCT scale where the crop allows) and cropped one
at a time to uint8, and normalised per batch (:mod:`sqz.data.transforms`), in the
workers or, for a GPU, on the GPU; with ``decode="gpu"`` the workers read bytes only and
the GPU decodes and crops (:mod:`sqz.data.gpu`). :mod:`sqz.data.loaders` checks a
``data_url``, loads a split of whichever kind it names, and batches it. Every public name is importable from
``sqz.data``; :mod:`sqz.data.prepare` (pyarrow writing, tqdm) is imported on its own.
"""

from sqz.data.builtin import BUILTIN_DATASETS, ShiftedTensors
from sqz.data.imagenet import (
    IMAGE_EXTENSIONS,
    SPLITS,
    FolderImages,
    GroundTruth,
    Split,
    SplitIndex,
    dataset_classes,
    flat_val_ground_truth,
    scan_split,
)
from sqz.data.loaders import ImageLoader, check_data_url, load_split, make_loader, num_classes_of
from sqz.data.parquet import MANIFEST_NAME, ParquetImages, is_prepared, read_manifest
from sqz.data.transforms import (
    CAFFE_MEAN_BGR,
    NORMALIZATIONS,
    CorruptImageError,
    ImageTransform,
    Normalization,
    SkippedImage,
    decode_image_bytes,
    normalize_batch,
)

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "CAFFE_MEAN_BGR",
    "MANIFEST_NAME",
    "SPLITS",
    "Split",
    "Normalization",
    "CorruptImageError",
    "SkippedImage",
    "ImageTransform",
    "GroundTruth",
    "SplitIndex",
    "FolderImages",
    "ParquetImages",
    "ShiftedTensors",
    "ImageLoader",
    "decode_image_bytes",
    "normalize_batch",
    "dataset_classes",
    "flat_val_ground_truth",
    "scan_split",
    "is_prepared",
    "read_manifest",
    "check_data_url",
    "load_split",
    "make_loader",
    "num_classes_of",
]
