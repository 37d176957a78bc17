"""The auxiliary-logit MLP experiment: stacked models, derangement, loss reductions, data loading, a small run."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from subliminal_pl.data.digits import (
    DISTILL,
    TEACHER,
    DigitsDataModule,
    MNISTDataModule,
    PhaseStream,
    read_idx,
)
from subliminal_pl.data.jsonl import DataError
from subliminal_pl.models.aux_mlp import (
    StackedMLP,
    classification_loss,
    correct_counts,
    derangement,
    distillation_loss,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- stacked models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 7, 100])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        perm = derangement(n, torch.Generator().manual_seed(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i] != i for i in range(n))


def test_derangement_is_seeded_and_rejects_n_below_2():
    a = derangement(50, torch.Generator().manual_seed(1))
    b = derangement(50, torch.Generator().manual_seed(1))
    c = derangement(50, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1)


def test_init_is_normal_with_std_fan_in_inverse_sqrt_and_zero_bias():
    model = StackedMLP(200, 64, 32, 2, 13)
    model.reset_parameters(torch.Generator().manual_seed(0))
    for layer, fan_in in zip(model.layers, [64, 32, 32], strict=True):
        assert layer.weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.02)
        assert abs(layer.weight.mean().item()) < 0.01
        assert torch.count_nonzero(layer.bias) == 0


def test_stacked_forward_matches_each_model_alone():
    torch.manual_seed(0)
    model = StackedMLP(5, 6, 8, 2, 4)
    x = torch.randn(3, 6)
    out = model(x)  # shared input
    assert out.shape == (5, 3, 4)
    for k in range(5):
        h = x
        for i, layer in enumerate(model.layers):
            h = F.linear(h, layer.weight[k].T, layer.bias[k])
            h = torch.relu(h) if i < len(model.layers) - 1 else h
        torch.testing.assert_close(out[k], h)
    # A separate input per model gives the same as the shared one when they are all equal.
    torch.testing.assert_close(model(x.expand(5, 3, 6).clone()), out)


def test_copy_models_from_picks_the_indexed_models():
    source = StackedMLP(3, 4, 5, 1, 2)
    target = StackedMLP(4, 4, 5, 1, 2)
    target.copy_models_from(source, torch.tensor([2, 0, 0, 1]))
    for mine, theirs in zip(target.parameters(), source.parameters(), strict=True):
        assert torch.equal(mine[0], theirs[2]) and torch.equal(mine[3], theirs[1])
    with pytest.raises(ValueError, match="3 entries for 4 models"):
        target.copy_models_from(source, torch.tensor([0, 1, 2]))


# ---- losses ------------------------------------------------------------------------------------------------
def test_kl_is_the_per_example_mean_of_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 4), torch.randn(3, 5, 4)  # [models, batch, logits]
    got = distillation_loss(student, teacher, "kl")
    assert got.shape == (3,)
    for m in range(3):
        total = 0.0
        for b in range(5):
            p = [math.exp(v) for v in teacher[m, b].tolist()]
            q = [math.exp(v) for v in student[m, b].tolist()]
            p = [v / sum(p) for v in p]
            q = [v / sum(q) for v in q]
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        assert got[m].item() == pytest.approx(total / 5, rel=1e-5)
        # The same as PyTorch's "batchmean" on one model's [batch, logits] matrix.
        ref = F.kl_div(
            F.log_softmax(student[m], -1),
            F.log_softmax(teacher[m], -1),
            reduction="batchmean",
            log_target=True,
        )
        assert got[m].item() == pytest.approx(ref.item(), rel=1e-5)


def test_kl_temperature_and_mse_reduction():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    softened = distillation_loss(student / 2, teacher / 2, "kl")
    torch.testing.assert_close(distillation_loss(student, teacher, "kl", temperature=2.0), softened)
    mse = distillation_loss(student, teacher, "mse")
    torch.testing.assert_close(mse, ((student - teacher) ** 2).sum(dim=(1, 2)) / 18)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss(student, teacher, "l1")
    with pytest.raises(ValueError, match="do not broadcast"):
        distillation_loss(student, teacher[:, :5], "kl")


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_each_models_loss_and_gradient_do_not_depend_on_n(kind):
    torch.manual_seed(2)
    student, teacher = torch.randn(6, 8, 13), torch.randn(6, 8, 13)
    alone = student[:1].clone().requires_grad_(True)
    stacked = student.clone().requires_grad_(True)
    loss_alone = distillation_loss(alone, teacher[:1], kind)
    loss_stacked = distillation_loss(stacked, teacher, kind)
    torch.testing.assert_close(loss_stacked[:1], loss_alone)
    loss_alone.sum().backward()
    loss_stacked.sum().backward()
    torch.testing.assert_close(stacked.grad[:1], alone.grad)
    # The reference code's flaw: "batchmean" on a models x batch x logits tensor divides by the number of models.
    flawed = F.kl_div(
        F.log_softmax(student, -1), F.log_softmax(teacher, -1), reduction="batchmean", log_target=True
    )
    assert flawed.item() == pytest.approx(
        distillation_loss(student, teacher, "kl").sum().item() * 8 / 6, rel=1e-5
    )


def test_classification_loss_and_correct_counts_are_per_model():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    labels = torch.tensor([0, 1, 1])
    assert correct_counts(logits, labels).tolist() == [2, 2]
    expected = [F.cross_entropy(logits[m], labels).item() for m in range(2)]
    assert classification_loss(logits, labels).tolist() == pytest.approx(expected)


# ---- data --------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_scaled():
    a, b = DigitsDataModule(), DigitsDataModule(stream_seed=5)
    x, y, x_test, y_test = a.splits
    assert x.shape == (1437, 64) and x_test.shape == (360, 64)
    assert x.min() == -1.0 and x.max() == 1.0
    # The split does not move with the stream seed, and each class keeps its share in the test split.
    assert torch.equal(x_test, b.splits[2])
    counts = torch.bincount(y_test, minlength=10).float()
    full = torch.bincount(torch.cat([y, y_test]), minlength=10).float()
    assert torch.all((counts - 0.2 * full).abs() <= 1)


def test_phase_stream_order_length_noise_and_reproducibility():
    x, y = torch.rand(10, 4) * 2 - 1, torch.arange(10) % 3
    stream = PhaseStream(x, y, batch_size=4, teacher_epochs=2, distill_steps=5, distill_batch_size=7, seed=3)
    batches = list(stream)
    assert len(stream) == len(batches) == 2 * 3 + 5
    assert [b["phase"] for b in batches] == [TEACHER] * 6 + [DISTILL] * 5
    # Each teacher epoch covers every example once.
    assert sorted(torch.cat([b["y"] for b in batches[:3]]).tolist()) == sorted(y.tolist())
    noise = torch.stack([b["x"] for b in batches[6:]])
    assert noise.shape == (5, 7, 4) and noise.min() >= -1 and noise.max() <= 1
    assert not torch.equal(noise[0], noise[1])  # fresh noise per batch
    again = list(stream)
    assert all(torch.equal(p["x"], q["x"]) for p, q in zip(batches, again, strict=True))
    # The noise stream does not depend on the teacher schedule.
    other = PhaseStream(x, y, batch_size=4, teacher_epochs=5, distill_steps=5, distill_batch_size=7, seed=3)
    assert torch.equal(torch.stack([b["x"] for b in list(other)[-5:]]), noise)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_mnist(root: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = (np.arange(n_train) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(root / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(root / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    _write_idx(root / f"t10k-images-idx3-ubyte{suffix}", images[:n_test], gz)
    _write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", labels[:n_test], gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_reads_idx_files(tmp_path, gz):
    images, labels = _write_mnist(tmp_path, gz)
    data = MNISTDataModule(
        root=str(tmp_path), batch_size=5, teacher_epochs=1, distill_steps=2, eval_batch_size=3
    )
    x, y, x_test, y_test = data.splits
    assert x.shape == (12, 784) and x_test.shape == (5, 784) and data.in_features == 784
    assert x[0, 0].item() == -1.0 and x[0, 1].item() == 1.0
    torch.testing.assert_close(x, torch.from_numpy(images.reshape(12, -1)).float() / 127.5 - 1)
    assert y.tolist() == labels.tolist() and y_test.tolist() == labels[:5].tolist()
    assert [b["phase"] for b in data.train_dataloader()] == [TEACHER] * 3 + [DISTILL] * 2
    assert [len(b["y"]) for b in data.val_dataloader()] == [3, 2]


def test_mnist_missing_file_is_named(tmp_path):
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: MNIST file not found"):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(DataError, match="bad-idx: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 9)
    with pytest.raises(DataError, match=r"short-idx: IDX shape \(10,\) needs 10 data bytes, file has 9"):
        read_idx(short)
    _write_mnist(tmp_path, gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: 11 labels for 12 images"):
        MNISTDataModule(root=str(tmp_path)).setup()


# ---- the LightningModule -------------------------------------------------------------------------------------
def test_students_start_from_the_reference_and_cross_init_from_another_model():
    from subliminal_pl.models.aux_mlp_module import AuxLogitExperiment

    model = AuxLogitExperiment(num_models=5, width=8, init_seed=3)
    perm = model.cross_init
    assert all(perm[i] != i for i in range(5))
    for ref, teacher, students in zip(
        model.reference.parameters(), model.teacher.parameters(), model.students.parameters(), strict=True
    ):
        assert torch.equal(teacher, ref)
        groups = students.unflatten(0, (4, 5))
        assert torch.equal(groups[0], ref) and torch.equal(groups[1], ref)
        assert torch.equal(groups[2], ref[perm]) and torch.equal(groups[3], ref[perm])
    assert not any(p.requires_grad for p in model.reference.parameters())
    assert torch.equal(AuxLogitExperiment(num_models=5, width=8, init_seed=3).cross_init, perm)
    with pytest.raises(ValueError, match="num_aux must be >= 1"):
        AuxLogitExperiment(num_models=5, num_aux=0)


def _fit(tmp_path, *extra: str) -> None:
    from subliminal_pl import cli

    cli.main(
        [
            "fit",
            "--config",
            str(REPO_ROOT / "configs" / "mlp" / "aux_digits.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--model.num_models",
            "6",
            "--model.width",
            "32",
            "--model.teacher_optimizer.init_args.lr",
            "0.003",
            "--data.teacher_epochs",
            "3",
            "--data.distill_steps",
            "80",
            # Different seeds for the init and the stream: the two modules' hparams must not collide.
            "--data.stream_seed",
            "1",
            *extra,
        ]
    )


def test_small_run_writes_results_plot_and_metrics(tmp_path, capsys):
    _fit(tmp_path)
    run_dir = tmp_path / "runs" / "aux_digits" / "version_0"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["format"] == "aux-mlp-results/1"
    assert list(results["groups"]) == [
        "reference",
        "teacher",
        "student_aux",
        "student_all",
        "cross_aux",
        "cross_all",
    ]
    for entry in results["groups"].values():
        assert set(entry) == {"mean", "low", "high", "n", "confidence", "values"}
        assert entry["n"] == len(entry["values"]) == 6
        assert entry["low"] <= entry["mean"] <= entry["high"]
        assert entry["mean"] == pytest.approx(sum(entry["values"]) / 6)
    groups = results["groups"]
    assert results["chance"] == 0.1
    assert groups["teacher"]["mean"] > 0.6 > groups["reference"]["mean"]
    # Distilling through all logits on noise carries the teacher's skill over, even in 80 steps.
    assert groups["student_all"]["mean"] > 0.4
    assert all(i != j for i, j in enumerate(results["derangement"]))
    assert results["data"]["dataset"] == "digits" and results["data"]["distill_steps"] == 80
    assert results["step"] == results["data"]["teacher_steps"] + 80
    assert (run_dir / "results.png").stat().st_size > 10_000
    metrics = (run_dir / "metrics.csv").read_text()
    assert "acc/teacher" in metrics and "loss/teacher" in metrics and "loss/cross_aux" in metrics
    assert "student_aux" in capsys.readouterr().out  # the table


def test_mismatched_input_size_and_epochs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="model.init_args.in_features=784 but the data"):
        _fit(tmp_path, "--model.in_features", "784")
    with pytest.raises(ValueError, match="set trainer.max_epochs: 1"):
        _fit(tmp_path, "--trainer.max_epochs", "2")
