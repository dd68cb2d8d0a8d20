"""Cut the built-in `cifar10-sample` from the real CIFAR-10 JPEG archive.

    python scripts/cut_cifar10_sample.py /path/to/cifar10-jpeg.tar.gz [--train 500] [--test 100]

Keeps the first N files by name per class and split (the archive is sorted, so
these are 0000.jpg … 0499.jpg), copies their bytes unchanged into
`ml/sample/cifar10-sample/{train,test}/<class>/`, and rewrites the README's
figures. Only the standard library is needed, so it runs before any setup.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "ml" / "sample" / "cifar10-sample"
SPLITS = ("train", "test")


def cut(archive: Path, dest: Path, per_class: dict[str, int]) -> dict[str, int]:
    """Copy the first `per_class[split]` images per class (by file name) from `archive` into `dest`."""
    wanted: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member in members:
            parts = member.name.split("/")
            if len(parts) != 4 or parts[1] not in SPLITS or not parts[3].endswith(".jpg"):
                continue
            wanted.setdefault((parts[1], parts[2]), []).append(member)
        if dest.exists():
            shutil.rmtree(dest)
        counts = dict.fromkeys(SPLITS, 0)
        for (split, cls), group in sorted(wanted.items()):
            folder = dest / split / cls
            folder.mkdir(parents=True)
            for member in sorted(group, key=lambda m: m.name)[:per_class[split]]:
                source = tar.extractfile(member)
                assert source is not None
                (folder / Path(member.name).name).write_bytes(source.read())
                counts[split] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path)
    parser.add_argument("--train", type=int, default=500, help="training images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    args = parser.parse_args()
    counts = cut(args.archive, DEST, {"train": args.train, "test": args.test})
    size = sum(p.stat().st_size for p in DEST.rglob("*.jpg"))
    print(f"{DEST}: {counts['train']} train + {counts['test']} test images, {size:,} bytes")


if __name__ == "__main__":
    main()
