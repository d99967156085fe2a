"""Write ``kdcache/datasets/digits.h5`` (shipped in the package) from the 1,797 UCI optical digits that scikit-learn ships (no download).

Layout: ``{train,test}/images`` (N, 8, 8) uint8 in 0..16 and ``{train,test}/labels`` (N,) int64, with a fixed
stratified 70/30 split (random_state=0). Run: ``python data/make_digits.py`` (needs scikit-learn, a dev extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write_digits(path: Path, *, test_fraction: float = 0.3, seed: int = 0) -> None:
    """Split the scikit-learn digits stratified by label and write both splits to one HDF5 file."""
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values are integers 0..16
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    with h5py.File(path, "w") as f:
        f.attrs["source"] = "UCI ML hand-written digits via sklearn.datasets.load_digits"
        f.attrs["pixel_max"] = 16
        f.attrs["split"] = f"stratified, test_fraction={test_fraction}, random_state={seed}"
        for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
            f.create_dataset(f"{split}/images", data=images[idx])
            f.create_dataset(f"{split}/labels", data=labels[idx])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(__file__).resolve().parents[1] / "kdcache" / "datasets" / "digits.h5"
    parser.add_argument("--out", type=Path, default=default)
    write_digits(parser.parse_args().out)
