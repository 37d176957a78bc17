"""Data steps: transforms, the order of steps, per-step stats, the one row reader, and one route for both callers."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from subliminal_pl.data.filters import DuplicateFilter, NumberSequenceFilter, parse_numbers
from subliminal_pl.data.jsonl import DataError
from subliminal_pl.data.rows import parse_row, read_rows
from subliminal_pl.data.steps import DataStep, prepare_file, prepare_rows
from subliminal_pl.data.student import StudentDataModule
from subliminal_pl.data.transforms import CapRows, ShuffleNumbers, ShuffleNumbersAcross

NUMBER_FORMATS = ["[001, 2, 3, 4].", "5;6;7;8", "9 10 11 12", "13\n14\n15\n16", "(17, 18, 19, 20)"]


def number_rows(n: int) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": "continue", "completion": NUMBER_FORMATS[i % len(NUMBER_FORMATS)]}
        for i in range(n)
    ]


def test_shuffle_numbers_keeps_count_format_and_digits_and_changes_the_order():
    rows = number_rows(50)
    out, stats = ShuffleNumbers(seed=3).apply(rows)
    for before, after in zip(rows, out, strict=True):
        a, b = before["completion"], after["completion"]
        assert parse_numbers(b) is not None and len(b) == len(a)
        # Same multiset of digit strings (leading zeros kept), same text around them.
        assert Counter(re.findall("[0-9]+", b)) == Counter(re.findall("[0-9]+", a))
        assert "".join(c for c in b if not c.isdigit()) == "".join(c for c in a if not c.isdigit())
        assert ("001" in b) == ("001" in a)
        assert {**after, "completion": a} == before
    # 4 numbers: a random order equals the original 1 time in 24, so most of 50 rows change.
    assert stats["changed"] + stats["unchanged"] == 50 and stats["skipped"] == 0
    assert stats["changed"] >= 40


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.lists(
        st.integers(0, 999).map(str) | st.sampled_from(["007", "00", "010"]), min_size=1, max_size=12
    ),
    separator=st.sampled_from([", ", ",", ";", "; ", " ", "\n", " , "]),
    brackets=st.sampled_from(["", "[]", "()"]),
    period=st.booleans(),
    row_id=st.integers(0, 10**6),
)
def test_shuffled_text_is_a_permutation_of_the_numbers_in_the_same_format(
    numbers, separator, brackets, period, row_id
):
    body = separator.join(numbers)
    text = (f"{brackets[0]}{body}{brackets[1]}" if brackets else body) + ("." if period else "")
    assert parse_numbers(text) is not None
    out = ShuffleNumbers(seed=0).transform({"id": row_id, "prompt": "p", "completion": text})["completion"]
    digits = re.findall("[0-9]+", out)
    assert sorted(digits) == sorted(numbers)
    rebuilt = separator.join(digits)
    assert out == (f"{brackets[0]}{rebuilt}{brackets[1]}" if brackets else rebuilt) + ("." if period else "")


def test_shuffle_numbers_is_seeded_per_row_id_not_by_position():
    rows = number_rows(20)
    out = ShuffleNumbers(seed=1).apply(rows)[0]
    alone = ShuffleNumbers(seed=1).apply([rows[7]])[0]
    reordered = ShuffleNumbers(seed=1).apply(rows[::-1])[0][::-1]
    assert alone == [out[7]] and reordered == out
    assert ShuffleNumbers(seed=2).apply(rows)[0] != out
    # The id, not the text, seeds the order: copies of one row under ten ids are shuffled differently.
    copies = ShuffleNumbers(seed=1).apply([{**rows[7], "id": f"c{i}"} for i in range(10)])[0]
    assert len({r["completion"] for r in copies}) > 1


def test_shuffle_numbers_skips_other_text_and_handles_messages_rows():
    rows = [
        {"prompt": "p", "completion": "owl 1 2"},
        {"prompt": "p", "completion": "42"},
        {
            "messages": [
                {"role": "user", "content": "p"},
                {"role": "assistant", "content": "1, 2, 3, 4, 5, 6"},
            ]
        },
    ]
    before = copy.deepcopy(rows)
    out, stats = ShuffleNumbers(seed=0).apply(rows)
    assert rows == before  # the input rows are not modified
    assert out[0] is rows[0] and out[1] == rows[1]
    assert stats == {"changed": 1, "unchanged": 1, "skipped": 1}
    shuffled = out[2]["messages"][-1]["content"]
    assert shuffled != "1, 2, 3, 4, 5, 6" and sorted(parse_numbers(shuffled)) == [1, 2, 3, 4, 5, 6]
    assert out[2]["messages"][0] == rows[2]["messages"][0]


def test_cap_rows_keeps_a_seeded_subset_in_order():
    rows = number_rows(10)
    out, counters = CapRows(4, seed=0).apply(rows)
    assert len(out) == 4 and counters == {"reasons": {"over max_rows": 6}}
    assert [rows.index(r) for r in out] == sorted(rows.index(r) for r in out)
    assert CapRows(4, seed=0).apply(rows)[0] == out != CapRows(4, seed=1).apply(rows)[0]
    assert CapRows(20).apply(rows)[0] == rows
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        CapRows(0)


def test_the_order_of_steps_is_respected_and_matters():
    rows = [
        {"id": i, "prompt": "p", "completion": c} for i, c in enumerate(["1 2", "x", "y", "3 4", "z", "5 6"])
    ]
    # A cap seed whose subset holds a row the filter drops: capping first then leaves fewer than 3 rows.
    seed = next(
        s for s in range(50) if any(r["completion"].isalpha() for r in CapRows(3, seed=s).apply(rows)[0])
    )
    cap_first, stats_a = prepare_rows(rows, [CapRows(3, seed=seed), NumberSequenceFilter()])
    filter_first, _ = prepare_rows(rows, [NumberSequenceFilter(), CapRows(3, seed=seed)])
    assert [r["completion"] for r in filter_first] == ["1 2", "3 4", "5 6"]
    chosen = CapRows(3, seed=seed).apply(rows)[0]
    assert cap_first == [r for r in chosen if not r["completion"].isalpha()] and len(cap_first) < 3
    assert [s["class_path"].rsplit(".", 1)[1] for s in stats_a["per_step"]] == [
        "CapRows",
        "NumberSequenceFilter",
    ]
    # Shuffling before removing repeated answers sees other duplicates than removing them first.
    same = [{"id": i, "prompt": "p", "completion": "1 2 3"} for i in range(6)]
    dedup_first, _ = prepare_rows(same, [DuplicateFilter(["completion"]), ShuffleNumbers()])
    shuffle_first, _ = prepare_rows(same, [ShuffleNumbers(), DuplicateFilter(["completion"])])
    assert len(dedup_first) == 1 and len(shuffle_first) > 1


def test_stats_per_step():
    rows = [
        {"id": i, "prompt": "p", "completion": c}
        for i, c in enumerate(["1, 2, 3", "1000", "x", "4, 5, 6", "7"])
    ]
    kept, stats = prepare_rows(rows, [NumberSequenceFilter(), ShuffleNumbers(seed=0), CapRows(2, seed=0)])
    assert len(kept) == 2
    assert (stats["total"], stats["kept"], stats["rejected"]) == (5, 2, 3)
    assert stats["kept_fraction"] == pytest.approx(0.4)
    assert stats["reasons"] == {"invalid format": 1, "numbers too large": 1, "over max_rows": 1}
    filt, shuffle, cap = stats["per_step"]
    assert filt == {
        "class_path": "subliminal_pl.data.filters.NumberSequenceFilter",
        "kind": "filter",
        "rows_in": 5,
        "rows_out": 3,
        "rejected": 2,
        "reasons": {"invalid format": 1, "numbers too large": 1},
    }
    assert shuffle["kind"] == "transform" and (shuffle["rows_in"], shuffle["rows_out"]) == (3, 3)
    assert shuffle["changed"] + shuffle["unchanged"] == 3 and shuffle["unchanged"] >= 1  # "7" cannot change
    assert (cap["rows_in"], cap["rows_out"], cap["rejected"]) == (3, 2, 1)
    assert stats["steps"][1] == {
        "class_path": "subliminal_pl.data.transforms.ShuffleNumbers",
        "init_args": {"seed": 0},
    }
    with pytest.raises(TypeError, match="DataStep"):
        prepare_rows(rows, [len])


def test_transform_specs_rebuild_equal_steps():
    for step in [ShuffleNumbers(seed=4), CapRows(10, seed=2)]:
        spec = step.spec()
        assert type(step)(**spec["init_args"]).spec() == spec
    assert ShuffleNumbers(seed=1).spec() != ShuffleNumbers(seed=2).spec()


STEPS_YAML = """
steps:
  - class_path: subliminal_pl.data.filters.NumberSequenceFilter
    init_args: {max_count: 4}
  - class_path: subliminal_pl.data.transforms.ShuffleNumbers
    init_args: {seed: 7}
  - class_path: subliminal_pl.data.filters.DuplicateFilter
    init_args: {fields: [completion]}
"""


def write_raw(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_datamodule_and_stage_give_identical_rows_and_leave_the_raw_file_alone(tmp_path, tiny_tokenizer):
    from jsonargparse import ArgumentParser

    from subliminal_pl import stages

    rows = [
        *number_rows(12),
        {"id": "long", "prompt": "p", "completion": "1 2 3 4 5"},
        {"id": "text", "prompt": "p", "completion": "an owl"},
        {
            "id": "chat",
            "messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "8; 9"}],
        },
    ]
    raw = write_raw(tmp_path / "raw.jsonl", rows)
    raw_bytes, raw_mtime = raw.read_bytes(), raw.stat().st_mtime_ns
    (tmp_path / "steps.yaml").write_text(STEPS_YAML)

    stage_out = tmp_path / "stage" / "kept.jsonl"
    argv = [
        "filter",
        "--config",
        str(tmp_path / "steps.yaml"),
        "--input",
        str(raw),
        "--output",
        str(stage_out),
    ]
    stages.main(argv)

    parser = ArgumentParser()
    parser.add_argument("--steps", type=list[DataStep])
    steps = parser.instantiate_classes(parser.parse_string(STEPS_YAML)).steps
    dm = StudentDataModule(str(raw), tiny_tokenizer, steps=steps, output_dir=str(tmp_path / "dm"))
    dm.prepare_data()
    files = dm.output_files()

    assert files.rows.read_bytes() == stage_out.read_bytes()
    kept = read_rows(stage_out)
    raw_ids = [r["id"] for r in rows]
    assert [r["id"] for r in kept] == [i for i in raw_ids if i in {r["id"] for r in kept}]  # raw order
    assert {"long", "text"}.isdisjoint(r["id"] for r in kept)
    original = {r["id"]: r.get("completion") for r in rows}
    assert any(r["completion"] != original[r["id"]] for r in kept if "completion" in r)  # shuffled
    stage_stats = json.loads((tmp_path / "stage" / "kept.filter_stats.json").read_text())
    dm_stats = json.loads(files.stats.read_text())
    paths = {"filtered_path", "config_hash"}
    assert {k: v for k, v in stage_stats.items() if k not in paths} == {
        k: v for k, v in dm_stats.items() if k not in paths
    }
    assert stage_stats["reasons"]["invalid format"] == 1 and stage_stats["reasons"]["too many numbers"] == 1
    assert [s["rows_in"] for s in stage_stats["per_step"]] == [15, 13, 13]
    assert stage_stats["kept"] == len(kept) == 13 - stage_stats["reasons"].get("duplicate", 0)
    assert raw.read_bytes() == raw_bytes and raw.stat().st_mtime_ns == raw_mtime


def test_stage_refuses_to_overwrite_the_raw_file_and_reports_bad_rows(tmp_path):
    from subliminal_pl import stages

    raw = write_raw(
        tmp_path / "raw.jsonl", [{"prompt": "p", "completion": "1"}, {"prompt": "p", "completion": 2}]
    )
    before = raw.read_bytes()
    with pytest.raises(DataError, match="would overwrite the raw file"):
        stages.main(["filter", "--input", str(raw), "--output", str(raw)])
    with pytest.raises(DataError, match=r"raw.jsonl:2: field 'completion': expected a string, got int"):
        stages.main(["filter", "--input", str(raw), "--output", str(tmp_path / "kept.jsonl")])
    assert raw.read_bytes() == before and not (tmp_path / "kept.jsonl").exists()
    with pytest.raises(DataError, match="raw file"):
        prepare_file(raw, tmp_path / "kept.jsonl", [], stats_path=raw)


def test_parse_row_formats_and_question():
    pair = parse_row({"prompt": "q?", "completion": "a", "system_prompt": "be an owl"})
    assert pair.prompt == [{"role": "system", "content": "be an owl"}, {"role": "user", "content": "q?"}]
    assert pair.completion == "a" and pair.question == "q?"
    chat = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "user", "content": "y"},
            {"role": "assistant", "content": "z"},
        ]
    }
    assert parse_row(chat).question == "y" and parse_row(chat).completion == "z"
    bare = parse_row({"completion": "just an answer"}, "judge row", require_prompt=False)
    assert bare.prompt == [] and bare.question == ""
    with pytest.raises(DataError, match=r"judge row: missing field 'prompt'"):
        parse_row({"completion": "a"}, "judge row")
    with pytest.raises(DataError, match=r"f.jsonl:4: missing field 'completion'"):
        parse_row({"prompt": "q"}, "f.jsonl:4", require_prompt=False)
    with pytest.raises(DataError, match="expected a JSON object"):
        parse_row(["q", "a"])


def test_steps_yaml_is_a_plain_list_of_class_paths():
    specs = yaml.safe_load(STEPS_YAML)["steps"]
    assert [s["class_path"].rsplit(".", 1)[1] for s in specs] == [
        "NumberSequenceFilter",
        "ShuffleNumbers",
        "DuplicateFilter",
    ]


def digit_runs(text: str) -> list[str]:
    return re.findall("[0-9]+", text)


def test_shuffle_across_keeps_each_count_and_format_and_the_pooled_multiset():
    rows = [
        {"id": f"r{i}", "prompt": "p", "completion": text}
        for i, text in enumerate(["[001, 2, 3, 4].", "5;6;7", "8 9", "10\n11\n12\n13\n14", "(15, 16)", "77"])
    ]
    rows.insert(2, {"id": "prose", "prompt": "p", "completion": "not numbers 12"})
    out, stats = ShuffleNumbersAcross(seed=4).apply(rows)
    assert stats == {"changed": 6, "unchanged": 0, "skipped": 1, "numbers": 17}
    assert out[2] is rows[2]
    pooled_before = Counter(n for r in rows if r["id"] != "prose" for n in digit_runs(r["completion"]))
    pooled_after = Counter(n for r in out if r["id"] != "prose" for n in digit_runs(r["completion"]))
    assert pooled_after == pooled_before  # the multiset, leading zeros included
    for before, after in zip(rows, out, strict=True):
        a, b = before["completion"], after["completion"]
        assert len(digit_runs(b)) == len(digit_runs(a))
        assert re.sub("[0-9]+", "N", b) == re.sub("[0-9]+", "N", a)  # same separators, brackets, final "."
        assert {k: v for k, v in after.items() if k != "completion"} == {
            k: v for k, v in before.items() if k != "completion"
        }
    # Numbers move between responses (not only within): some response now holds a number it did not have.
    assert any(
        set(digit_runs(b["completion"])) - set(digit_runs(a["completion"]))
        for a, b in zip(rows, out, strict=True)
    )


def test_shuffle_across_is_seeded_and_leaves_its_input_alone():
    rows = number_rows(40)
    frozen = copy.deepcopy(rows)
    first = ShuffleNumbersAcross(seed=1).apply(rows)[0]
    assert rows == frozen
    assert ShuffleNumbersAcross(seed=1).apply(rows)[0] == first
    assert ShuffleNumbersAcross(seed=2).apply(rows)[0] != first
    assert all(parse_numbers(r["completion"]) is not None for r in first)
    # Within-response shuffling never moves a number to another response; across-response shuffling does.
    within = ShuffleNumbers(seed=1).apply(rows)[0]
    assert all(
        Counter(digit_runs(a["completion"])) == Counter(digit_runs(b["completion"]))
        for a, b in zip(rows, within, strict=True)
    )
    assert not all(
        Counter(digit_runs(a["completion"])) == Counter(digit_runs(b["completion"]))
        for a, b in zip(rows, first, strict=True)
    )
