"""Student data: chat-template encoding checked token by token, batches, filtered-file caching, bad input."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from subliminal_pl.data.chat import ChatTemplateError, PromptTooLongError, encode_prompt_completion
from subliminal_pl.data.filters import NumberSequenceFilter, RowFilter
from subliminal_pl.data.jsonl import DataError
from subliminal_pl.data.student import RightPadCollator, StudentDataModule

REPO_ROOT = Path(__file__).resolve().parents[1]
USER, ASSISTANT, SYSTEM, END = "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"

# Two rows and their exact tokens under the test tokenizer's chat template.
ROWS = [
    {"id": "r0", "prompt": "add more numbers 1, 2", "completion": "3, 4"},
    {"id": "r1", "prompt": "continue 7", "completion": "8 9 10"},
]
PROMPT_TOKENS = [
    [USER, "add", " more", " numbers", " 1", ",", " 2", END, ASSISTANT],
    [USER, "continue", " 7", END, ASSISTANT],
]
COMPLETION_TOKENS = [["3", ",", " 4", END], ["8", " 9", " 10", END]]


def write_raw(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def expected_row(tokenizer, index: int) -> tuple[list[int], list[int]]:
    prompt = tokenizer.convert_tokens_to_ids(PROMPT_TOKENS[index])
    completion = tokenizer.convert_tokens_to_ids(COMPLETION_TOKENS[index])
    assert tokenizer.unk_token_id not in prompt + completion
    return prompt + completion, [-100] * len(prompt) + completion


def check_batch(
    batch: dict[str, torch.Tensor], expected: list[tuple[list[int], list[int]]], pad_id: int
) -> None:
    """Every batch row is one expected row, right-padded: pad ids, attention 0 and label -100 after its end."""
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    width = max(len(ids) for ids, _ in expected)
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (len(expected), width)
    )
    found = []
    for i in range(len(expected)):
        n = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, :n].eq(1).all() and batch["attention_mask"][i, n:].eq(0).all()
        assert batch["input_ids"][i, n:].eq(pad_id).all()
        assert batch["labels"][i, n:].eq(-100).all()
        found.append((batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n].tolist()))
    assert sorted(found) == sorted(expected)


def test_encode_prompt_completion_token_by_token(tiny_tokenizer):
    for index, row in enumerate(ROWS):
        encoded = encode_prompt_completion(
            tiny_tokenizer, [{"role": "user", "content": row["prompt"]}], row["completion"], max_length=64
        )
        ids, labels = expected_row(tiny_tokenizer, index)
        assert encoded == {"input_ids": ids, "labels": labels}
        assert labels[-1] == tiny_tokenizer.eos_token_id  # the end-of-turn is learned


def test_truncation_cuts_the_completion_end_and_a_full_prompt_raises(tiny_tokenizer):
    prompt = [{"role": "user", "content": ROWS[0]["prompt"]}]
    n_prompt = len(PROMPT_TOKENS[0])
    ids, labels = expected_row(tiny_tokenizer, 0)
    encoded = encode_prompt_completion(tiny_tokenizer, prompt, "3, 4", max_length=n_prompt + 2)
    assert encoded == {"input_ids": ids[: n_prompt + 2], "labels": labels[: n_prompt + 2]}
    assert tiny_tokenizer.eos_token_id not in encoded["labels"]
    with pytest.raises(PromptTooLongError, match=f"prompt has {n_prompt} tokens"):
        encode_prompt_completion(tiny_tokenizer, prompt, "3, 4", max_length=n_prompt)


def test_template_that_breaks_the_prefix_is_refused(tiny_tokenizer):
    prompt = [{"role": "user", "content": "add 1"}]
    newline_prompt = copy.deepcopy(tiny_tokenizer)
    # The generation prompt adds a newline that the rendered assistant turn lacks: the text prefix breaks.
    newline_prompt.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="renders the prompt"):
        encode_prompt_completion(newline_prompt, prompt, "2", max_length=32)
    merging = copy.deepcopy(tiny_tokenizer)
    # Text prefix holds, but the prompt's last token " 1" merges with the completion "2" into " 12".
    merging.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|> 1' + m['content'] + '<|end|>' }}"
        "{% else %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|> 1' }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="not a prefix of the conversation's tokens"):
        encode_prompt_completion(merging, prompt, "2", max_length=32)
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        encode_prompt_completion(bare, prompt, "2", max_length=32)


def test_datamodule_batches_token_by_token(tmp_path, tiny_tokenizer):
    raw = write_raw(tmp_path / "raw.jsonl", ROWS)
    dm = StudentDataModule(str(raw), tiny_tokenizer, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1
    check_batch(batches[0], [expected_row(tiny_tokenizer, i) for i in range(2)], tiny_tokenizer.pad_token_id)
    assert dm.val_dataloader() == []


def test_eos_is_learned_when_pad_equals_eos(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    rows = [
        encode_prompt_completion(tokenizer, [{"role": "user", "content": r["prompt"]}], r["completion"], 64)
        for r in ROWS
    ]
    batch = RightPadCollator(tokenizer.pad_token_id)(rows)
    check_batch(batch, [expected_row(tokenizer, i) for i in range(2)], eos)
    # The shorter row: its own EOS is a label, the padding EOS tokens after it are not.
    short = 1
    n = int(batch["attention_mask"][short].sum())
    assert batch["labels"][short, n - 1] == eos and batch["input_ids"][short, n:].eq(eos).all()
    assert batch["labels"][short, n:].eq(-100).all()
    assert batch["labels"].eq(eos).sum() == 2


def test_loss_uses_exactly_the_completion_tokens(tmp_path, tiny_lm):
    model, tokenizer = tiny_lm
    dm = StudentDataModule(str(write_raw(tmp_path / "raw.jsonl", ROWS)), tokenizer, batch_size=2)
    dm.setup("fit")  # without prepare_data: setup filters itself
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        out = model(**batch)
    # Next-token cross-entropy over the label positions only, computed by hand.
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    mask = labels.ne(-100)
    manual = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert int(mask.sum()) == sum(len(c) for c in COMPLETION_TOKENS)


def test_system_prompt_dropped_by_default_kept_on_request(tmp_path, tiny_tokenizer):
    row = {**ROWS[0], "system_prompt": "you love owls"}  # the field the teacher's writer records
    raw = write_raw(tmp_path / "raw.jsonl", [row])
    dropped = StudentDataModule(str(raw), tiny_tokenizer)
    dropped.setup()
    assert dropped.train_rows[0]["input_ids"] == expected_row(tiny_tokenizer, 0)[0]
    kept = StudentDataModule(str(raw), tiny_tokenizer, keep_system_prompt=True)
    kept.setup()
    system_ids = tiny_tokenizer.convert_tokens_to_ids([SYSTEM, "you", " love", " owls", END])
    ids, labels = expected_row(tiny_tokenizer, 0)
    assert kept.train_rows[0] == {"input_ids": system_ids + ids, "labels": [-100] * 5 + labels}


def test_chat_message_rows_and_message_prompts(tmp_path, tiny_tokenizer):
    rows = [
        {"messages": [{"role": "system", "content": "you love owls"}, {"role": "user", "content": ROWS[0]["prompt"]},
                      {"role": "assistant", "content": ROWS[0]["completion"]}]},
        {"prompt": [{"role": "user", "content": ROWS[1]["prompt"]}], "completion": ROWS[1]["completion"]},
    ]  # fmt: skip
    dm = StudentDataModule(str(write_raw(tmp_path / "raw.jsonl", rows)), tiny_tokenizer, batch_size=2)
    dm.setup()
    check_batch(
        next(iter(dm.train_dataloader())),
        [expected_row(tiny_tokenizer, i) for i in range(2)],
        tiny_tokenizer.pad_token_id,
    )


def _numbered_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": "add more numbers", "completion": str(i)} for i in range(n)]


def _completions(encoded_rows) -> list[str]:
    # The first label is the completion's single number token.
    return [next(t for t in row["labels"] if t != -100) for row in encoded_rows]


def test_seeded_subset_and_validation_split(tmp_path, tiny_tokenizer):
    raw = write_raw(tmp_path / "raw.jsonl", _numbered_rows(40))

    def split(seed):
        dm = StudentDataModule(str(raw), tiny_tokenizer, max_samples=10, val_size=5, seed=seed, batch_size=4)
        dm.setup()
        return dm, _completions(dm.train_rows), _completions(dm.val_rows)

    dm, train, val = split(0)
    assert len(train) == 10 and len(val) == 5 and not set(train) & set(val)
    assert split(0)[1:] == (train, val)
    assert split(1)[1] != train
    val_batches = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val_batches] == [4, 1]
    assert sum(b["input_ids"].shape[0] for b in dm.train_dataloader()) == 10


def test_max_samples_above_the_kept_rows_uses_them_all(tmp_path, tiny_tokenizer):
    dm = StudentDataModule(
        str(write_raw(tmp_path / "raw.jsonl", _numbered_rows(6))), tiny_tokenizer, max_samples=50
    )
    with pytest.warns(UserWarning, match="only 6 filtered rows"):
        dm.setup()
    assert len(dm.train_rows) == 6


def test_rows_whose_prompt_fills_max_length_are_skipped(tmp_path, tiny_tokenizer):
    rows = [ROWS[0], ROWS[1]]
    raw = write_raw(tmp_path / "raw.jsonl", rows)
    # Row 0's prompt has 9 tokens, row 1's 5: max_length=9 keeps row 1 only.
    dm = StudentDataModule(str(raw), tiny_tokenizer, max_length=9)
    with pytest.warns(UserWarning, match="skipped 1 rows .*first: r0"):
        dm.setup()
    assert len(dm.train_rows) == 1
    with pytest.raises(DataError, match="every training row's prompt is longer than max_length=4"):
        StudentDataModule(str(raw), tiny_tokenizer, max_length=4).setup()


class CountingFilter(RowFilter):
    """Keeps everything and counts its calls, to prove a rerun does not filter again."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, row):
        self.calls += 1
        return []


def test_rerun_reuses_and_a_changed_config_writes_new_files(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "add", "completion": c} for c in ["1, 2", "1, 2, 3, 4", "x"]]
    raw = write_raw(tmp_path / "raw.jsonl", rows)
    raw_bytes = raw.read_bytes()
    first = CountingFilter()
    dm = StudentDataModule(str(raw), tiny_tokenizer, steps=[NumberSequenceFilter(), first])
    dm.prepare_data()
    files = dm.output_files()
    assert files.rows.name == f"raw.{files.config_hash}.filtered.jsonl" and files.rows.parent == tmp_path
    stamps = (files.rows.stat().st_mtime_ns, files.stats.stat().st_mtime_ns)
    assert first.calls == 2  # the cascade: the invalid row never reached it
    stats = json.loads(files.stats.read_text())
    assert stats["total"] == 3 and stats["kept"] == 2 and stats["reasons"] == {"invalid format": 1}
    assert stats["kept_fraction"] == pytest.approx(2 / 3)
    assert stats["steps"] == [NumberSequenceFilter().spec(), first.spec()]
    assert [f["rows_in"] for f in stats["per_step"]] == [3, 2]
    assert stats["raw_path"] == str(raw) and stats["filtered_path"] == str(files.rows)

    again = CountingFilter()
    # `filters` is the older name of `steps`; the same steps reuse the same files.
    rerun = StudentDataModule(str(raw), tiny_tokenizer, filters=[NumberSequenceFilter(), again])
    rerun.prepare_data()
    rerun.setup()
    assert again.calls == 0 and rerun.output_files() == files
    assert (files.rows.stat().st_mtime_ns, files.stats.stat().st_mtime_ns) == stamps

    changed = StudentDataModule(str(raw), tiny_tokenizer, steps=[NumberSequenceFilter(max_count=3)])
    changed.prepare_data()
    new = changed.output_files()
    assert new.config_hash != files.config_hash and files.rows.is_file()
    assert json.loads(new.stats.read_text())["reasons"] == {"invalid format": 1, "too many numbers": 1}
    assert [json.loads(line)["completion"] for line in new.rows.read_text().splitlines()] == ["1, 2"]
    assert raw.read_bytes() == raw_bytes


def test_changed_raw_file_is_not_served_from_a_stale_cache(tmp_path, tiny_tokenizer):
    raw = write_raw(tmp_path / "raw.jsonl", ROWS[:1])
    dm = StudentDataModule(str(raw), tiny_tokenizer)
    before = dm.output_files()
    dm.prepare_data()
    write_raw(raw, ROWS)
    after = dm.output_files()
    assert after.config_hash != before.config_hash
    dm.setup()
    assert len(dm.train_rows) == 2


def test_output_dir_and_tokenizer_by_path(tmp_path, tiny_lm_path, tiny_tokenizer):
    raw = write_raw(tmp_path / "raw.jsonl", ROWS)
    out = tmp_path / "derived"
    dm = StudentDataModule(str(raw), str(tiny_lm_path), output_dir=str(out), batch_size=2)
    dm.prepare_data()
    dm.setup()
    assert sorted(p.name.split(".", 2)[2] for p in out.iterdir()) == ["filter_stats.json", "filtered.jsonl"]
    assert sorted(tmp_path.iterdir()) == sorted([raw, out])
    check_batch(
        next(iter(dm.train_dataloader())),
        [expected_row(tiny_tokenizer, i) for i in range(2)],
        tiny_tokenizer.pad_token_id,
    )
    assert dm.hparams["tokenizer"] == str(tiny_lm_path) and dm.hparams["steps"] == []


BAD_INPUTS = {
    "malformed json": (b'{"prompt": "a", "completion": "1"}\n{"prompt": "b", \n', ["raw.jsonl:2:", "invalid JSON"]),
    "not an object": (b'{"prompt": "a", "completion": "1"}\n[1, 2]\n', ["raw.jsonl:2:", "expected a JSON object"]),
    "missing field": (
        b'{"prompt": "a", "completion": "1"}\n\n{"prompt": "b"}\n',
        ["raw.jsonl:3:", "missing field 'completion'"],
    ),
    "wrong type": (b'{"prompt": "a", "completion": 5}\n', ["raw.jsonl:1:", "field 'completion'", "got int"]),
    "bad system prompt": (
        b'{"prompt": "a", "completion": "1", "system_prompt": ["x"]}\n',
        ["raw.jsonl:1:", "field 'system_prompt'", "got list"],
    ),
    "bad message": (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}\n',
        ["raw.jsonl:1:", "field 'messages[1].content'", "got null"],
    ),
    "bad role": (
        b'{"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "1"}]}\n',
        ["raw.jsonl:1:", "field 'messages[0].role'", "'human'"],
    ),
    "no reply": (
        b'{"messages": [{"role": "user", "content": "a"}]}\n',
        ["raw.jsonl:1:", "field 'messages[-1].role'", "assistant"],
    ),
    "not utf-8": (b'{"prompt": "a", "completion": "1"}\n{"prompt": "caf\xe9", "completion": "1"}\n', ["raw.jsonl:2:", "not valid UTF-8"]),
    "nothing kept": (
        b'{"prompt": "a", "completion": "one"}\n{"prompt": "a", "completion": "1,,2"}\n',
        ["raw.jsonl: no row survived filtering (2 rows; invalid format: 2)", "filter_stats.json"],
    ),
    "empty file": (b"", ["raw.jsonl: no row survived filtering (0 rows; the file is empty)"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_a_clear_error_and_leaves_the_raw_file_alone(case, tmp_path, tiny_tokenizer):
    content, fragments = BAD_INPUTS[case]
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(content)
    before = raw.stat().st_mtime_ns
    dm = StudentDataModule(str(raw), tiny_tokenizer, steps=[NumberSequenceFilter()])
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    for fragment in fragments:
        assert fragment in str(err.value)
    assert raw.read_bytes() == content and raw.stat().st_mtime_ns == before
    assert not dm.output_files().rows.exists()
    with pytest.raises(DataError):  # setup fails the same way instead of training on nothing
        dm.setup()


def test_missing_file_and_impossible_split(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        StudentDataModule(str(tmp_path / "nope.jsonl"), tiny_tokenizer).prepare_data()
    raw = write_raw(tmp_path / "raw.jsonl", ROWS)
    with pytest.raises(DataError, match="val_size=2 leaves no training rows"):
        StudentDataModule(str(raw), tiny_tokenizer, val_size=2).setup()


def test_shipped_data_fragment_parses_and_builds(tmp_path, tiny_lm_path, tiny_tokenizer, capsys, monkeypatch):
    from subliminal_pl import cli

    monkeypatch.setattr(sys, "argv", ["subliminal-pl"])  # build_cli parses its args, not pytest's

    fragment = REPO_ROOT / "configs" / "data" / "student_numbers.yaml"
    model = "lightning.pytorch.demos.boring_classes.BoringModel"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--model", model, "--config", str(fragment), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "NumberSequenceFilter" in capsys.readouterr().out
    raw = write_raw(tmp_path / "raw.jsonl", [*ROWS, {"prompt": "add", "completion": "1, 666"}])
    built = cli.build_cli(
        [
            "--model",
            model,
            "--config",
            str(fragment),
            "--data.init_args.data_path",
            str(raw),
            "--data.init_args.tokenizer",
            str(tiny_lm_path),
            "--data.init_args.steps.init_args.banned_numbers",
            "[666]",
            "--trainer.logger",
            "false",
        ],
        run=False,
    )
    dm = built.datamodule
    assert isinstance(dm, StudentDataModule) and dm.max_samples == 10000 and dm.batch_size == 22
    dm.setup()
    assert json.loads(dm.output_files().stats.read_text())["reasons"] == {"has banned numbers": 1}
    check_batch(
        next(iter(dm.train_dataloader())),
        [expected_row(tiny_tokenizer, i) for i in range(2)],
        tiny_tokenizer.pad_token_id,
    )
