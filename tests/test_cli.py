"""The entry point: overview, routing, every shipped recipe parses, and bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from subliminal_pl import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINER_PRESETS = sorted((REPO_ROOT / "configs" / "trainer").glob("*.yaml"))
RECIPES = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if p.parent.name != "trainer")


def test_overview_lists_every_command(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for name in [*cli.TRAINER_COMMANDS, *cli.EXTRA_COMMANDS]:
        assert f"  {name}" in out


def test_unknown_command_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fitt"])
    assert "unknown command 'fitt'" in str(exc.value)


def _recipe_command(path: Path) -> str:
    """Recipes declare their command in a first-line comment `# subliminal-pl COMMAND ...`; fit by default."""
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    if first.startswith("# subliminal-pl "):
        return first.split()[2]
    return "fit"


def _is_trainer_recipe(path: Path) -> bool:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return isinstance(data, dict) and "model" in data


@pytest.mark.parametrize("preset", TRAINER_PRESETS, ids=lambda p: p.name)
def test_trainer_preset_prints_config(preset, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "fit",
                "--config",
                str(preset),
                "--model",
                "lightning.pytorch.demos.boring_classes.BoringModel",
                "--print_config",
            ]
        )
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "trainer:" in out and "accelerator" in out


@pytest.mark.parametrize(
    "recipe", [p for p in RECIPES if _is_trainer_recipe(p)], ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_recipe_prints_config(recipe, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([_recipe_command(recipe), "--config", str(recipe), "--print_config"])
    assert exc.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_bad_value_names_the_key(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "fit",
                "--model",
                "lightning.pytorch.demos.boring_classes.BoringModel",
                "--trainer.max_epochs",
                "many",
                "--print_config",
            ]
        )
    assert exc.value.code not in (0, None)
    assert "max_epochs" in capsys.readouterr().err


def test_fit_saves_config_in_versioned_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.main(
        [
            "fit",
            "--model",
            "lightning.pytorch.demos.boring_classes.BoringModel",
            "--data",
            "lightning.pytorch.demos.boring_classes.BoringDataModule",
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    run_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert "BoringModel" in (run_dir / "config.yaml").read_text()
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    # A second run goes to a new version instead of failing on the saved config.
    cli.main(
        [
            "fit",
            "--model",
            "lightning.pytorch.demos.boring_classes.BoringModel",
            "--data",
            "lightning.pytorch.demos.boring_classes.BoringDataModule",
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    assert (tmp_path / "runs" / "lightning_logs" / "version_1" / "config.yaml").is_file()


def test_tiny_lm_fixture_loads_offline(tiny_lm):
    model, tokenizer = tiny_lm
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "add 3 numbers"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
