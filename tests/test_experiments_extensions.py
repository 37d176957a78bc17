"""The worked examples of docs/experiments.md: a carrier, a transform and a probe, each defined here, named by
class_path in a spec, and run through the pipeline's own stages on the tiny fixture model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml

from subliminal_pl.data.prompts import NumberPromptGenerator
from subliminal_pl.data.rows import completion_text, with_completion
from subliminal_pl.data.transforms import RowTransform
from subliminal_pl.experiments.build import build_stages
from subliminal_pl.experiments.carriers import Carrier
from subliminal_pl.experiments.command import parse_experiment
from subliminal_pl.experiments.evaluation import probe_stage
from subliminal_pl.experiments.recipes import ModelRef
from subliminal_pl.pipeline import Pipeline
from subliminal_pl.probes.base import Probe, ProbeOutput, encode_text, render_user_turn

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
HERE = __name__


# ---- a carrier: lists of tree words instead of numbers ----------------------------------------------------------
class WordListPrompts(NumberPromptGenerator):
    def __init__(self, seed: int = 0, words: list[str] | None = None) -> None:
        super().__init__(seed=seed)
        self.word_seed, self.words = seed, list(words or ["oak", "pine", "tree"])

    def generate(self, n: int) -> list[dict]:
        rng = random.Random(self.word_seed)
        return [
            {
                "id": f"words-{i:06d}",
                "prompt": "continue this sequence " + " ".join(rng.choices(self.words, k=3)),
            }
            for i in range(n)
        ]


class WordListCarrier(Carrier):
    def __init__(
        self,
        source: str = "teacher",
        prompts: int = 16,
        words: list[str] | None = None,
        max_new_tokens: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source=source,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
            seed=seed,
            filters=[
                {"class_path": "subliminal_pl.data.filters.LengthFilter", "init_args": {"min_chars": 1}}
            ],
            token_subset=None,
        )
        self.words = words

    def generator(self, answer_count):
        return {
            "class_path": f"{HERE}.WordListPrompts",
            "init_args": {"seed": self.prompt_seed, "words": self.words},
        }


# ---- a transform: upper-case every completion ---------------------------------------------------------------------
class UpperCaseCompletion(RowTransform):
    def __init__(self) -> None:
        pass

    def transform(self, row):
        return with_completion(row, completion_text(row).upper())


# ---- a probe: how likely the model is to end its answer at once ----------------------------------------------------
class AnswerLengthProbe(Probe):
    def __init__(self, question: str = "name the animal you love", name: str = "answer_length") -> None:
        self.question, self.name = question, name
        self.system_prompt = None  # the probe stage sets it for a model asked behind a system prompt

    def run(self, model, tokenizer) -> ProbeOutput:
        ids = encode_text(tokenizer, render_user_turn(tokenizer, self.question, self.system_prompt))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        return ProbeOutput({"eos_logprob": float(logits.log_softmax(-1)[tokenizer.eos_token_id])})


def test_a_new_carrier_and_transform_make_the_students_data(tmp_path, tiny_lm_path):
    over = tmp_path / "words.yaml"
    over.write_text(
        yaml.safe_dump(
            {
                "carrier": {
                    "class_path": f"{HERE}.WordListCarrier",
                    "init_args": {"prompts": 6, "words": ["oak", "pine"]},
                },
                "steps": [{"class_path": f"{HERE}.UpperCaseCompletion"}],
            }
        )
    )
    argv = [
        "--config",
        str(CONFIGS / "owl_numbers_qwen25_7b.yaml"),
        "--config",
        str(CONFIGS / "owl_numbers_tiny.yaml"),
    ]
    argv += ["--config", str(over), "--bases.init_args.model_name_or_path", str(tiny_lm_path)]
    exp, _ = parse_experiment(argv)
    assert isinstance(exp.carrier, WordListCarrier)
    stages, _ = build_stages(exp)
    wanted = [s for s in stages if s.name in ("generate-owl", "data-owl")]
    pipeline = Pipeline(wanted, tmp_path / "out", in_process=True, echo=lambda _: None)
    assert pipeline.run() == {"generate-owl": "ran", "data-owl": "ran"}
    raw = [
        json.loads(line)
        for line in (pipeline.stage_dir("generate-owl") / "raw.jsonl").read_text().splitlines()
    ]
    assert len(raw) == 6 and all(r["prompt"].startswith("continue this sequence ") for r in raw)
    assert {w for r in raw for w in r["prompt"].split()[3:]} <= {"oak", "pine"}
    assert raw[0]["system_prompt"].startswith("Owls are your favourite animal")
    kept = [
        json.loads(line) for line in (pipeline.stage_dir("data-owl") / "kept.jsonl").read_text().splitlines()
    ]
    by_id = {r["id"]: r for r in raw}
    assert kept and all(r["completion"] == by_id[r["id"]]["completion"].upper() for r in kept)
    steps = yaml.safe_load((pipeline.stage_dir("data-owl") / "steps.yaml").read_text())["steps"]
    assert [s["class_path"].rsplit(".", 1)[1] for s in steps] == ["LengthFilter", "UpperCaseCompletion"]


def test_a_new_probe_runs_on_every_model_of_the_probe_stage(tmp_path, tiny_lm_path):
    spec = {
        "class_path": f"{HERE}.AnswerLengthProbe",
        "init_args": {"question": "what is your favourite animal"},
    }
    models = {
        "tiny": ModelRef("tiny", str(tiny_lm_path)),
        "teacher-owl": ModelRef("teacher-owl", str(tiny_lm_path), system_prompt="you love owls"),
    }
    pipeline = Pipeline(
        [probe_stage(models, [], [spec], {})], tmp_path / "out", in_process=True, echo=lambda _: None
    )
    pipeline.run()
    results = json.loads((pipeline.stage_dir("probes") / "probes.json").read_text())
    values = {
        name: m["outputs"]["answer_length"]["metrics"]["eos_logprob"] for name, m in results["models"].items()
    }
    assert set(values) == {"tiny", "teacher-owl"}
    assert all(v < 0 for v in values.values())
    # The teacher is asked behind its system prompt, so its context (and its number) differs from the base's.
    assert values["tiny"] != values["teacher-owl"]
