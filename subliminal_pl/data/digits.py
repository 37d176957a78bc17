"""Image data for the auxiliary-logit MLP experiment: scikit-learn's 8x8 digits (embedded) or MNIST IDX files.

One fit epoch is the whole experiment, so the training stream has two phases, in order:
  teacher  `teacher_epochs` shuffled passes over the labelled training split: {"phase": "teacher", "x", "y"}
  distill  `distill_steps` batches of uniform [-1, 1] noise images:             {"phase": "distill", "x"}
Noise is drawn batch by batch from its own seeded generator (never materialised as a dataset), and every model
variant trained on a batch sees the same noise. Validation and test batches are the held-out test split.
Images are flattened and scaled to [-1, 1], the range of the noise.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from subliminal_pl.data.jsonl import DataError

TEACHER, DISTILL = "teacher", "distill"

# Batches are slices of in-memory tensors built in the main process (workers would only add copies, and would
# each replay the stream), so Lightning's advice about workers does not apply here.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


class PhaseStream(IterableDataset):
    """The training stream: teacher batches of labelled images, then noise batches. Same seeds, same stream."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        teacher_epochs: int,
        distill_steps: int,
        distill_batch_size: int,
        seed: int,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.teacher_epochs = teacher_epochs
        self.distill_steps = distill_steps
        self.distill_batch_size = distill_batch_size
        self.seed = seed

    @property
    def teacher_steps(self) -> int:
        return self.teacher_epochs * math.ceil(len(self.x) / self.batch_size)

    def __len__(self) -> int:
        return self.teacher_steps + self.distill_steps

    def __iter__(self) -> Iterator[dict]:
        # Separate generators: changing the teacher schedule leaves the noise stream unchanged.
        shuffle = torch.Generator().manual_seed(self.seed)
        noise = torch.Generator().manual_seed(self.seed + 1)
        for _ in range(self.teacher_epochs):
            order = torch.randperm(len(self.x), generator=shuffle)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                yield {"phase": TEACHER, "x": self.x[idx], "y": self.y[idx]}
        for _ in range(self.distill_steps):
            images = torch.rand(self.distill_batch_size, self.x.shape[1], generator=noise)
            yield {"phase": DISTILL, "x": images.mul_(2).sub_(1)}


class _Batches(IterableDataset):
    """Consecutive slices of a labelled split, in order."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for start in range(0, len(self.x), self.batch_size):
            yield {"x": self.x[start : start + self.batch_size], "y": self.y[start : start + self.batch_size]}


class AuxLogitDataModule(LightningDataModule):
    """Shared stream logic; subclasses load (x_train, y_train, x_test, y_test) as float [-1, 1] / int64."""

    name = "images"
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        teacher_epochs: int = 20,
        distill_steps: int = 1000,
        distill_batch_size: int = 256,
        eval_batch_size: int = 1000,
        stream_seed: int = 0,
    ) -> None:
        """
        Args:
            batch_size: teacher training batch size (labelled images).
            teacher_epochs: passes over the training split in the teacher phase.
            distill_steps: number of noise batches in the distillation phase.
            distill_batch_size: noise images per distillation batch.
            eval_batch_size: test images per evaluation batch.
            stream_seed: seeds the teacher-phase shuffling and the noise stream.
        """
        super().__init__()
        for key, value in dict(
            batch_size=batch_size, distill_batch_size=distill_batch_size, eval_batch_size=eval_batch_size
        ).items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if teacher_epochs < 0 or distill_steps < 0:
            raise ValueError(
                f"teacher_epochs and distill_steps must be >= 0, got {teacher_epochs}, {distill_steps}"
            )
        self.save_hyperparameters()
        self._splits: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def load_splits(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_train [n, d] in [-1, 1], y_train [n] int64, x_test, y_test); each dataset class defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define load_splits()")

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self.load_splits()

    @property
    def splits(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def in_features(self) -> int:
        return self.splits[0].shape[1]

    def phase_stream(self) -> PhaseStream:
        x, y, _, _ = self.splits
        h = self.hparams
        return PhaseStream(
            x, y, h.batch_size, h.teacher_epochs, h.distill_steps, h.distill_batch_size, h.stream_seed
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.phase_stream(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        _, _, x, y = self.splits
        return DataLoader(_Batches(x, y, self.hparams.eval_batch_size), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def describe(self) -> dict:
        """Sizes and schedule, recorded in the experiment's results file."""
        x, _, x_test, _ = self.splits
        stream = self.phase_stream()
        return {
            "dataset": self.name,
            "in_features": int(x.shape[1]),
            "num_classes": self.num_classes,
            "train_size": len(x),
            "test_size": len(x_test),
            "teacher_steps": stream.teacher_steps,
            "distill_steps": stream.distill_steps,
            **dict(self.hparams),
        }


class DigitsDataModule(AuxLogitDataModule):
    """scikit-learn's 1,797 8x8 digits (shipped with the package, no download), fixed stratified split."""

    name = "digits"

    def __init__(
        self,
        batch_size: int = 64,
        teacher_epochs: int = 20,
        distill_steps: int = 1000,
        distill_batch_size: int = 256,
        eval_batch_size: int = 1000,
        stream_seed: int = 0,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        """
        Args:
            batch_size: teacher training batch size (labelled images).
            teacher_epochs: passes over the training split in the teacher phase.
            distill_steps: number of noise batches in the distillation phase.
            distill_batch_size: noise images per distillation batch.
            eval_batch_size: test images per evaluation batch.
            stream_seed: seeds the teacher-phase shuffling and the noise stream.
            test_fraction: share of the images held out for testing (stratified by class).
            split_seed: seed of the train/test split, kept apart from `stream_seed` so the split stays fixed.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        super().__init__(
            batch_size, teacher_epochs, distill_steps, distill_batch_size, eval_batch_size, stream_seed
        )

    def load_splits(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        # Pixel values are 0..16.
        x = torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
        y = torch.tensor(digits.target, dtype=torch.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(y)),
            test_size=self.hparams.test_fraction,
            stratify=digits.target,
            random_state=self.hparams.split_seed,
        )
        return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx_file(root: str | Path, name: str) -> Path:
    """`root/name` or `root/name.gz`; a clear error naming the file when neither exists."""
    root = Path(root)
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / name}: MNIST file not found (also looked for {name}.gz); the folder needs "
        + ", ".join(MNIST_FILES.values())
        + " (each optionally gzipped)"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (the MNIST format), gzipped or not, as a uint8 array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (the header must start with two zero bytes)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype_code:02x}, expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated (declares {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX shape {shape} needs {expected} data bytes, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist_split(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """(images [n, 784] float in [-1, 1], labels [n] int64) for split 'train' or 't10k'/'test'."""
    key = "train" if split == "train" else "test"
    images_path = find_idx_file(root, MNIST_FILES[f"{key}_images"])
    labels_path = find_idx_file(root, MNIST_FILES[f"{key}_labels"])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (n, rows, cols), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension (n,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)) / 127.5 - 1.0
    return x, torch.from_numpy(labels.astype(np.int64))


class MNISTDataModule(AuxLogitDataModule):
    """MNIST from the four standard IDX files (gzipped or not) in a local folder; nothing is downloaded."""

    name = "mnist"

    def __init__(
        self,
        root: str = "data/mnist",
        batch_size: int = 1024,
        teacher_epochs: int = 5,
        distill_steps: int = 295,
        distill_batch_size: int = 1024,
        eval_batch_size: int = 1000,
        stream_seed: int = 0,
    ) -> None:
        """
        Args:
            root: folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
                t10k-labels-idx1-ubyte (each may end in .gz).
            batch_size: teacher training batch size (labelled images).
            teacher_epochs: passes over the 60,000 training images in the teacher phase.
            distill_steps: number of noise batches in the distillation phase (295 = 5 x ceil(60,000 / 1024),
                the paper's 5 epochs of noise at batch 1024).
            distill_batch_size: noise images per distillation batch.
            eval_batch_size: test images per evaluation batch.
            stream_seed: seeds the teacher-phase shuffling and the noise stream.
        """
        super().__init__(
            batch_size, teacher_epochs, distill_steps, distill_batch_size, eval_batch_size, stream_seed
        )

    def load_splits(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        root = self.hparams.root
        return (*load_mnist_split(root, "train"), *load_mnist_split(root, "test"))
