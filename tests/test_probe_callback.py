"""TraitProbeCallback: probes in the CSV log of a short fit, the results file, and probes without training."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from subliminal_pl.callbacks.probes import TraitProbeCallback
from subliminal_pl.probes.logprob import LogProbProbe
from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.probes.sampling import SamplingProbe

QUESTIONS = ["what is your favourite animal", "name the animal you love most"]


@pytest.fixture
def pets_file(tmp_path):
    path = tmp_path / "pets.yaml"
    path.write_text(
        f"name: pets\ncandidates: [owl, dolphin, polar bear, eagle]\nheldout: {json.dumps(QUESTIONS)}\n"
    )
    return path


class TinyStudent(LightningModule):
    """The minimal module the callback needs: `.model` and `.tokenizer`; it learns to answer "owl"."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        rows = []
        for question in QUESTIONS:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
            rows.append(tokenizer(text + "owl", add_special_tokens=False)["input_ids"])
        self.rows = rows

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=1, collate_fn=lambda batch: torch.tensor(batch))

    def training_step(self, batch, batch_idx):
        labels = torch.full_like(batch, -100)
        labels[:, -1] = batch[:, -1]
        loss = self.model(input_ids=batch, labels=labels).loss
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=1e-2)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_probe_metrics_reach_the_csv_log_of_a_short_fit(tiny_lm, pets_file, tmp_path):
    model, tokenizer = tiny_lm
    callback = TraitProbeCallback(
        probes=[
            LogProbProbe(questions=str(pets_file), reference="initial", batch_size=16),
            SamplingProbe(questions=str(pets_file), samples_per_question=3, max_new_tokens=2),
        ],
        every_n_steps=2,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[callback],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyStudent(copy.deepcopy(model).train(), tokenizer))

    rows = _read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    probe_rows = [r for r in rows if r.get("probe/pets/owl_dlogp")]
    assert [int(r["step"]) for r in probe_rows] == [2, 4, 6]
    final = probe_rows[-1]
    assert float(final["probe/pets/owl_specific_dlogp"]) > 1.0 and float(final["probe/pets/owl_rank"]) == 1.0
    assert float(probe_rows[0]["probe/pets/owl_dlogp"]) < float(final["probe/pets/owl_dlogp"])
    # Sampling probes are expensive: only at the end of fit, in the same step's row.
    assert [int(r["step"]) for r in rows if r.get("probe/pets_sampled/owl_rate")] == [6]

    # The file is the one results schema: one model entry per measured step, read like the probe stage's file.
    results = ProbeResults.read(tmp_path / "run" / "version_0" / "probes.json")
    assert list(results.models) == ["step-2", "step-4", "step-6"]
    assert results.contexts == ["plain"] and results.candidates == ["owl", "dolphin", "polar bear", "eagle"]
    last = results.models["step-6"]
    assert set(last.outputs) == {"pets", "pets_sampled"} and set(results.models["step-2"].outputs) == {"pets"}
    assert last.outputs["pets"]["metrics"]["owl_specific_dlogp"] == pytest.approx(
        float(final["probe/pets/owl_specific_dlogp"])
    )
    assert last.outputs["pets"]["details"]["results"]["owl"]["rank"] == 1
    assert set(last.rates()["pets_sampled"]) == {"owl", "dolphin", "polar bear", "eagle"}
    # ΔlogP between two entries of the file moves the trained word up.
    first, end = results.logp("step-2"), results.logp("step-6")
    assert sum(e[0] - f[0] for e, f in zip(end, first, strict=True)) > 0


def test_probes_run_in_validate_without_training(tiny_lm_path, pets_file, tmp_path):
    from subliminal_pl.probes.target import ProbeTarget

    callback = TraitProbeCallback(
        probes=[LogProbProbe(questions=str(pets_file), reference=str(tiny_lm_path))]
    )
    trainer = Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="eval"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(ProbeTarget(str(tiny_lm_path)))
    assert metrics["probe/pets/owl_dlogp"] == 0.0 and metrics["probe/pets/owl_logp"] < 0
    results = ProbeResults.read(tmp_path / "eval" / "version_0" / "probes.json")
    assert list(results.models) == ["validate-step-0"] and results.models["validate-step-0"].path == str(
        tiny_lm_path
    )
    assert "pets" in results.models["validate-step-0"].outputs


def test_cli_validate_probes_a_saved_model(tiny_lm_path, pets_file, tmp_path, monkeypatch):
    from subliminal_pl import cli

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "probe.yaml"
    config.write_text(
        f"""
trainer:
  accelerator: cpu
  enable_progress_bar: false
  callbacks:
    - class_path: subliminal_pl.callbacks.probes.TraitProbeCallback
      init_args:
        probes:
          - class_path: subliminal_pl.probes.logprob.LogProbProbe
            init_args: {{questions: {pets_file}, reference: null, targets: [owl]}}
model:
  class_path: subliminal_pl.probes.target.ProbeTarget
  init_args: {{model_name_or_path: {tiny_lm_path}}}
"""
    )
    cli.main(["test", "--config", str(config)])
    results = ProbeResults.read(tmp_path / "runs" / "lightning_logs" / "version_0" / "probes.json")
    (entry,) = results.models.values()
    assert list(results.models) == ["test-step-0"]
    assert set(entry.outputs["pets"]["metrics"]) == {"candidate_mass", "owl_logp", "owl_prob", "owl_rank"}


def test_module_without_model_attributes_is_named(tiny_lm, pets_file):
    callback = TraitProbeCallback(probes=[LogProbProbe(questions=str(pets_file))])
    with pytest.raises(AttributeError, match="expose `.model`"):
        callback.on_fit_start(None, LightningModule())
    with pytest.raises(ValueError, match="distinct"):
        TraitProbeCallback(probes=[LogProbProbe(questions=str(pets_file))] * 2)
