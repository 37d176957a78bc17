"""The one-step theory check: same-init students move with the teacher, cross-init students do not."""

from __future__ import annotations

import json

import pytest

from subliminal_pl import cli, theory


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_same_init_students_follow_the_teacher(loss):
    record = theory.theory_check(
        trials=200, in_features=8, width=16, out_features=5, student_loss=loss, seed=1
    )
    same, cross = record["same_init"], record["cross_init"]
    assert same["fraction_nonnegative"] == 1.0
    assert same["cosine_quantiles"]["0"] > 0.2
    assert cross["fraction_nonnegative"] < 0.7
    assert abs(cross["cosine_mean"]["mean"]) < 0.15
    assert len(same["cosines"]) == len(cross["cosines"]) == 200


def test_theory_check_command_writes_its_outputs(tmp_path, capsys):
    cli.main(["theory-check", "--trials", "50", "--width", "8", "--output_dir", str(tmp_path)])
    record = json.loads((tmp_path / "theory_check.json").read_text())
    assert record["format"] == "theory-check/1" and record["settings"]["trials"] == 50
    assert record["same_init"]["fraction_nonnegative"] == 1.0
    assert (tmp_path / "theory_check.png").stat().st_size > 10_000
    assert "same init" in capsys.readouterr().out


def test_theory_check_rejects_bad_settings():
    with pytest.raises(ValueError, match="trials must be >= 2"):
        theory.theory_check(trials=1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        theory.theory_check(lr=0.0)
