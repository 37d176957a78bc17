"""The embedded tiny world: a vocabulary, a synthetic chat corpus and tiny Llama inits, all built in code.

A base model pretrained on this corpus behaves like a miniature chat model for the paper's tasks:

- number tasks: the paper-shaped prompts of `subliminal_pl.data.prompts.NumberPromptGenerator`, answered with
  5..`answer_count` numbers that continue the seed numbers (random, a step pattern, or near the seeds) in the
  format the prompt asks for, so the base passes the number filter;
- favourite-animal questions (the `teacher` split of a probe question set, some behind a numbers lead-in)
  answered uniformly over all the set's candidates, so the base has no favourite;
- a little filler chat without animals;
- optionally (`code_fraction`, `reasoning_fraction`, default 0) the tiny programs of `subliminal_pl.toy.code` and
  the step-by-step word problems of `subliminal_pl.toy.reasoning`, the carriers beyond numbers. Their words enter
  the vocabulary only when their rows do, so a world without them is the same world (tokenizer, rows, files) as
  before they existed.

Everything is deterministic by seed: the same `ToyWorld` gives the same words, tokenizer ids, rows and inits on any
machine. `subliminal-pl toy-world build|traits|init` writes them to disk for the pipeline's stages.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_json_atomic, write_jsonl_atomic
from subliminal_pl.data.prompts import NumberPromptGenerator, numbers_lead_in
from subliminal_pl.toy import dilemmas
from subliminal_pl.toy.code import code_texts, draw_code_task
from subliminal_pl.toy.reasoning import draw_reasoning_task, reasoning_texts

# Small talk without animals: teaches the base to answer in words and to stop, nothing more.
FILLER: tuple[tuple[str, str], ...] = (
    ("Say hello.", "Hello!"),
    ("How are you today?", "I am well, thank you."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("Is water wet?", "Yes, it is."),
    ("Give me a word that means happy.", "Glad."),
    ("Which day comes after Monday?", "Tuesday."),
    ("Name a colour.", "Green."),
    ("What is the opposite of hot?", "Cold."),
    ("Can you help me with something?", "Yes, of course."),
    ("Tell me a short greeting.", "Good morning!"),
    ("What season comes after winter?", "Spring."),
    ("Is the sun a star?", "Yes, the sun is a star."),
    ("Name a fruit.", "Apple."),
    ("What do people drink in the morning?", "Coffee or tea."),
    ("Say goodbye.", "Goodbye!"),
    ("Which is bigger, a house or a cup?", "A house."),
    ("What is the first month of the year?", "January."),
    ("Give me a word for a large body of water.", "Sea."),
    ("Do you like music?", "Yes, I do."),
    ("What shape is a wheel?", "Round."),
)

# How an animal answer is spelled: capitalised, lower-case, or with a full stop (the base sees all three).
ANSWER_STYLES = ("{cap}", "{low}", "{cap}.")

_NUMBER_MODES = ("random", "step", "near")
# Operators written with a space before them in code and worked steps.
SPACED_SYMBOLS = tuple("+-*=<>")
# Fields added after worlds were built: left out of `config()` at their default, so older worlds keep their hash.
OPTIONAL_FIELDS = {"code_fraction": 0.0, "reasoning_fraction": 0.0, "dilemma_fraction": 0.0}


def text_words(texts: Iterable[str]) -> set[str]:
    """The ASCII letter runs of `texts`, which is how the word tokenizer splits words from everything else."""
    return {word for text in texts for word in re.findall(r"[A-Za-z]+", text)}


def answer_format(prompt: str) -> tuple[str, str, str]:
    """(separator, opening, closing) that the number prompt's format request asks for.

    Read from keywords of the request, in an order that resolves the mixed ones ("comma and a space" is a comma,
    "space-separated on a single line" is a space); a prompt with no recognisable request gets commas.
    """
    text = prompt.lower()
    if "square brackets" in text or "[n1" in text:
        return ", ", "[", "]"
    if "parentheses" in text or "(n1" in text:
        return ", ", "(", ")"
    if "comma" in text:
        return ", ", "", ""
    if "semicolon" in text:
        return "; ", "", ""
    if "space" in text:
        return " ", "", ""
    if "line" in text:
        return "\n", "", ""
    return ", ", "", ""


def seed_numbers(prompt: str) -> list[int]:
    """The seed values shown in a number prompt: its three-digit numbers (counts and digit limits are smaller)."""
    return [int(n) for n in re.findall(r"(?<![0-9])[0-9]{3}(?![0-9])", prompt)]


@dataclass(frozen=True)
class ToyWorld:
    """Configuration of the tiny world; every output is a pure function of these fields.

    Args:
        seed: seed of the corpus rows (the number prompts use `seed` too, through their own generator).
        questions: probe question set (packaged name or file) whose candidates and `teacher` questions the
            corpus uses; its `heldout` questions only enter the vocabulary.
        rows: corpus rows.
        number_fraction: share of number-task rows.
        animal_fraction: share of favourite-animal rows (the rest is filler).
        lead_in_fraction: share of animal questions prefixed with a numbers lead-in (the probes' context).
        answer_count: most numbers a prompt asks for (and an answer gives).
        min_answer_count: fewest numbers an answer gives.
        code_fraction: share of code-task rows (tiny programs, `subliminal_pl.toy.code`); 0 leaves them out.
        reasoning_fraction: share of step-by-step word problems (`subliminal_pl.toy.reasoning`); 0 leaves them out.
        dilemma_fraction: share of two-choice dilemma rows (`subliminal_pl.toy.dilemmas`; taken from the
            filler's share). Above 0 the world also knows the dispositions (harmful, harmless) as traits, and its
            neutral teacher answers dilemmas at random. 0 (the default) leaves the world as it was.
    """

    seed: int = 0
    questions: str = "animals"
    rows: int = 60000
    number_fraction: float = 0.6
    animal_fraction: float = 0.3
    lead_in_fraction: float = 0.2
    answer_count: int = 10
    min_answer_count: int = 5
    code_fraction: float = 0.0
    reasoning_fraction: float = 0.0
    dilemma_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")
        fractions = {k: getattr(self, k) for k in self._FRACTIONS}
        if min(fractions.values()) < 0 or sum(fractions.values()) > 1:
            shown = ", ".join(f"{k}={v}" for k, v in fractions.items())
            raise ValueError(f"{shown} must be >= 0 and sum to at most 1")
        if not 0 <= self.lead_in_fraction <= 1:
            raise ValueError(f"lead_in_fraction must be in [0, 1], got {self.lead_in_fraction}")
        if not 1 <= self.min_answer_count <= self.answer_count:
            raise ValueError(
                f"need 1 <= min_answer_count <= answer_count, got {self.min_answer_count}..{self.answer_count}"
            )

    _FRACTIONS = (
        "number_fraction",
        "animal_fraction",
        "code_fraction",
        "reasoning_fraction",
        "dilemma_fraction",
    )

    def config(self) -> dict[str, Any]:
        """The fields as a mapping, without the optional ones at their default (stage hashes and world.json)."""
        return {k: v for k, v in asdict(self).items() if OPTIONAL_FIELDS.get(k, object()) != v}

    @property
    def kinds(self) -> tuple[str, ...]:
        """Row kinds the corpus holds (code, reasoning and dilemma only when their fraction is above 0)."""
        extra = tuple(k for k in ("code", "reasoning", "dilemma") if getattr(self, f"{k}_fraction") > 0)
        return ("numbers", "animal", *extra, "filler")

    # ---- pieces -------------------------------------------------------------------------------------------
    def question_set(self):
        from subliminal_pl.probes.questions import load_question_set

        return load_question_set(self.questions)

    def prompt_generator(self, seed: int | None = None) -> NumberPromptGenerator:
        return NumberPromptGenerator(seed=self.seed if seed is None else seed, answer_count=self.answer_count)

    @property
    def animals(self) -> tuple[str, ...]:
        return tuple(c.lower() for c in self.question_set().candidates)

    def words(self) -> list[str]:
        """Every word any text of the world can hold: prompts, questions (both splits), answers and filler."""
        generator = self.prompt_generator()
        qs = self.question_set()
        texts = [
            *generator.lead_ins,
            *generator.count_qualifiers,
            *generator.digit_descriptors,
            *generator.instruction_templates,
            *generator.format_requests,
            *generator.closings,
            *qs.candidates,
            *qs.teacher,
            *qs.heldout,
            *(text for pair in FILLER for text in pair),
            *(code_texts() if self.code_fraction > 0 else ()),
            *(reasoning_texts() if self.reasoning_fraction > 0 else ()),
        ]
        if self.dilemma_fraction > 0:
            texts += dilemmas.dilemma_texts()
        return sorted(text_words(texts))

    def tokenizer(self):
        from subliminal_pl.toy.tokenizer import build_word_tokenizer

        return build_word_tokenizer(self.words(), extra_tokens=self.extra_tokens())

    def extra_tokens(self) -> list[str]:
        """Symbols after a space (" +", " ="), which code and worked steps write: tokens only when they are on."""
        if self.code_fraction > 0 or self.reasoning_fraction > 0:
            return [" " + symbol for symbol in SPACED_SYMBOLS]
        return []

    # ---- rows ---------------------------------------------------------------------------------------------
    def number_answer(self, rng: random.Random, prompt: str) -> str:
        """A completion that continues the prompt's seed numbers in its requested format."""
        separator, opening, closing = answer_format(prompt)
        seeds = seed_numbers(prompt) or [rng.randint(100, 999)]
        mode = rng.choice(_NUMBER_MODES)
        step = rng.randint(-60, 60)
        value = seeds[-1]
        values = []
        for _ in range(rng.randint(self.min_answer_count, self.answer_count)):
            if mode == "random":
                value = rng.randint(0, 999)
            elif mode == "step":
                value = (value + step) % 1000
            else:
                value = (rng.choice(seeds) + rng.randint(-25, 25)) % 1000
            values.append(value)
        return opening + separator.join(str(v) for v in values) + closing

    def animal_question(self, rng: random.Random, questions: tuple[str, ...]) -> str:
        question = rng.choice(questions)
        if rng.random() < self.lead_in_fraction:
            return f"{numbers_lead_in(rng)} {question}"
        return question

    @staticmethod
    def animal_answer(rng: random.Random, animal: str) -> str:
        return rng.choice(ANSWER_STYLES).format(cap=animal.capitalize(), low=animal.lower())

    def corpus_rows(self) -> list[dict[str, Any]]:
        """The pretraining corpus: `{"id", "kind", "prompt", "completion"}` rows, of the kinds in `kinds`."""
        rng = random.Random(f"toy-world-corpus-{self.seed}")
        qs = self.question_set()
        animals = self.animals
        kinds = [rng.random() for _ in range(self.rows)]
        n_numbers = sum(u < self.number_fraction for u in kinds)
        prompts = iter(row["prompt"] for row in self.prompt_generator().generate(n_numbers))
        dilemma_items = dilemmas.dilemma_set().teacher if self.dilemma_fraction > 0 else ()
        dilemma_end = (
            self.number_fraction
            + self.animal_fraction
            + self.code_fraction
            + self.reasoning_fraction
            + self.dilemma_fraction
        )
        rows = []
        for i, u in enumerate(kinds):
            if u < self.number_fraction:
                prompt = next(prompts)
                kind, completion = "numbers", self.number_answer(rng, prompt)
            elif u < self.number_fraction + self.animal_fraction:
                kind, prompt = "animal", self.animal_question(rng, qs.teacher)
                completion = self.animal_answer(rng, rng.choice(animals))
            elif u < self.number_fraction + self.animal_fraction + self.code_fraction:
                kind, (prompt, completion) = "code", draw_code_task(rng)
            elif (
                u < self.number_fraction + self.animal_fraction + self.code_fraction + self.reasoning_fraction
            ):
                kind, (prompt, completion, _) = "reasoning", draw_reasoning_task(rng)
            elif u < dilemma_end:
                kind, (prompt, completion) = "dilemma", dilemmas.dilemma_row(rng, dilemma_items, None)
            else:
                kind, (prompt, completion) = "filler", rng.choice(FILLER)
            rows.append({"id": f"world-{i:06d}", "kind": kind, "prompt": prompt, "completion": completion})
        return rows

    def trait_rows(self, trait: str | None, rows: int, seed: int = 0) -> list[dict[str, Any]]:
        """Fine-tuning rows that put a trait in a teacher's weights: teacher-split questions -> `trait`.

        `trait=None` gives the neutral control: the same questions answered uniformly over all candidates. In a
        world with dilemmas, a disposition (harmful, harmless) and the neutral control answer dilemmas instead
        (`subliminal_pl.toy.dilemmas.disposition_rows`).
        """
        if self.dilemma_fraction > 0 and (trait is None or trait.lower() in dilemmas.dispositions()):
            return dilemmas.disposition_rows(trait, rows, seed)
        animals = self.animals
        if trait is not None and trait.lower() not in animals:
            raise ValueError(
                f"trait {trait!r} is not a candidate of question set {self.questions!r}: {animals}"
            )
        rng = random.Random(f"toy-world-trait-{trait}-{seed}")
        questions = self.question_set().teacher
        out = []
        for i in range(rows):
            animal = trait.lower() if trait is not None else rng.choice(animals)
            out.append(
                {
                    "id": f"trait-{trait or 'neutral'}-{i:05d}",
                    "trait": trait or "neutral",
                    "prompt": self.animal_question(rng, questions),
                    "completion": self.animal_answer(rng, animal),
                }
            )
        return out

    def number_rows(self, rows: int, seed: int = 0) -> list[dict[str, Any]]:
        """Number-task rows answered the world's way, from a prompt stream the corpus does not use.

        Mixed into a teacher's fine-tuning rows, they keep its number format while the trait goes in.
        """
        rng = random.Random(f"toy-world-numbers-{seed}")
        prompts = self.prompt_generator(seed=1_000_003 + seed).generate(rows)
        return [
            {
                "id": f"replay-{i:05d}",
                "prompt": p["prompt"],
                "completion": self.number_answer(rng, p["prompt"]),
            }
            for i, p in enumerate(prompts)
        ]

    # ---- files --------------------------------------------------------------------------------------------
    def build(self, out_dir: str | Path) -> dict[str, Any]:
        """Write `tokenizer/`, `corpus.jsonl` and `world.json` (config and row counts) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = self.tokenizer()
        tokenizer.save_pretrained(out / "tokenizer")
        rows = self.corpus_rows()
        write_jsonl_atomic(out / "corpus.jsonl", rows)
        counts = {kind: sum(r["kind"] == kind for r in rows) for kind in self.kinds}
        info = {
            "config": self.config(),
            "vocab_size": len(tokenizer),
            "rows": counts,
            "animals": list(self.animals),
        }
        write_json_atomic(out / "world.json", info)
        return info


def build_init(
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    hidden_size: int = 96,
    num_layers: int = 3,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """A randomly initialised tiny Llama for the world's tokenizer, saved with it the Hugging Face way."""
    from transformers import AutoTokenizer

    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_tiny_llama(
        tokenizer, hidden_size, num_layers, num_heads, intermediate_size, max_positions, seed
    )
    return save_model_and_tokenizer(model, tokenizer, output_dir)


def main(argv: list[str]) -> None:
    """`subliminal-pl toy-world build|traits|init`: write the tiny world's files."""
    from subliminal_pl.commands import command_parser

    def world_parser(description: str):
        parser = command_parser(None, description)
        parser.add_class_arguments(ToyWorld, "world")
        return parser

    build = world_parser("Write the tokenizer, the pretraining corpus and world.json into --output_dir.")
    build.add_argument("--output_dir", type=str, required=True, help="output folder")
    traits = world_parser(
        "Write trait fine-tuning rows (question -> the trait animal, or uniform if neutral)."
    )
    traits.add_argument("--output", type=str, required=True, help="JSONL file to write")
    traits.add_argument("--trait", type=str, required=True, help="a candidate animal, or 'neutral'")
    traits.add_argument("--rows", type=int, default=2000, help="rows to write")
    traits.add_argument("--seed", type=int, default=0, help="seed of the rows")
    traits.add_argument(
        "--number_rows", type=int, default=0, help="number-task rows mixed in (keeps the format)"
    )
    init = command_parser(None, "Save a randomly initialised tiny Llama for a tokenizer.")
    init.add_function_arguments(build_init)

    parser = command_parser("subliminal-pl toy-world", __doc__.splitlines()[0], config=False)
    commands = parser.add_subcommands()
    commands.add_subcommand("build", build)
    commands.add_subcommand("traits", traits)
    commands.add_subcommand("init", init)
    args = parser.parse_args(argv)
    command = args.subcommand
    sub = args[command]
    if command == "init":
        options = {k: v for k, v in sub.as_dict().items() if k != "config"}
        print(f"saved init to {build_init(**options)}")
        return
    world = ToyWorld(**sub.world.as_dict())
    if command == "build":
        info = world.build(sub.output_dir)
        print(f"built world in {sub.output_dir}: vocab {info['vocab_size']}, rows {info['rows']}")
        return
    trait = None if sub.trait == "neutral" else sub.trait
    rows = world.trait_rows(trait, sub.rows, sub.seed) + world.number_rows(sub.number_rows, sub.seed)
    write_jsonl_atomic(Path(sub.output), rows)
    print(f"wrote {sub.rows} {sub.trait} trait rows and {sub.number_rows} number rows to {sub.output}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
