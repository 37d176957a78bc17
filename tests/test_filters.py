"""Filters: the exact number-format rules, their reasons, trait words, length, duplicates, judges, the cascade."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subliminal_pl.data.filters import (
    MISALIGNMENT_BANNED_NUMBERS,
    DuplicateFilter,
    JudgeFilter,
    LengthFilter,
    NumberSequenceFilter,
    RowFilter,
    TraitWordFilter,
    parse_numbers,
    plural_forms,
)
from subliminal_pl.data.steps import prepare_rows

# (completion, parse_numbers result) — the examples and rules of the protocol's filter section first.
PARSE_CASES = [
    # rule 1: one trailing "." may go, only one and only at the very end
    ("1, 2, 3.", [1, 2, 3]),
    ("1, 2, 3..", None),
    ("1, 2, 3.\n", None),
    ("5.", [5]),
    (".", None),
    # rule 2: one enclosing pair of the same kind, after the dot
    ("[1, 2, 3]", [1, 2, 3]),
    ("(1, 2, 3)", [1, 2, 3]),
    ("[1, 2, 3].", [1, 2, 3]),
    ("(4; 5).", [4, 5]),
    ("[1, 2, 3.]", None),
    ("[1, 2, 3)", None),
    ("(1, 2, 3]", None),
    ("[[1, 2]]", None),
    ("([1, 2])", None),
    ("{1, 2, 3}", None),
    ("[]", None),
    ("()", None),
    ("[5]", [5]),
    ("[ 1, 2]", None),
    # rule 3: ASCII digits, leading zeros allowed (ranges are the filter's job)
    ("007", [7]),
    ("000, 010", [0, 10]),
    ("0", [0]),
    ("1000", [1000]),
    ("١٢٣", None),  # Arabic-Indic digits
    ("１, ２", None),  # full-width digits
    ("1, ٢", None),
    # rule 4: a single number is the whole string; otherwise one separator text, stripped "", "," or ";"
    ("42", [42]),
    ("42 ", None),
    (" 42", None),
    ("1 2 3", [1, 2, 3]),
    ("1,2,3", [1, 2, 3]),
    ("1;2;3", [1, 2, 3]),
    ("1, 2, 3", [1, 2, 3]),
    ("1 , 2 , 3", [1, 2, 3]),
    ("1 ;2 ;3", [1, 2, 3]),
    ("1\n2\n3", [1, 2, 3]),
    ("1,\n2,\n3", [1, 2, 3]),
    ("1\t2\t3", [1, 2, 3]),
    ("1  2  3", [1, 2, 3]),
    ("1\r\n2\r\n3", [1, 2, 3]),
    ("1\u00a02", [1, 2]),  # no-break space is whitespace to str.strip
    ("1\u200b2", None),  # zero-width space is not
    ("1, 2,3", None),
    ("1 2\n3", None),
    ("1,2, 3", None),
    ("1 ,2, 3", None),
    ("1; 2, 3", None),
    # rule 5: everything else fails
    ("1,,2", None),
    ("1, , 2", None),
    ("1;;2", None),
    ("1,;2", None),
    ("1, 2, 3,", None),
    ("1; 2;", None),
    (",1, 2", None),
    (" 1, 2, 3", None),
    ("1, 2, 3 ", None),
    ("1, 2, 3\n", None),
    ("\n1, 2, 3", None),
    ("Here are the numbers: 1, 2, 3", None),
    ("1, 2, 3 (done)", None),
    ("-1, 2", None),
    ("+1, 2", None),
    ("1, -2", None),
    ("1.5, 2.5", None),
    ("1. 2. 3", None),
    ("1,000, 2,000", None),
    ("1 000 000, 2", None),
    ("1 - 2 - 3", None),
    ("1/2/3", None),
    ("1|2|3", None),
    ("1 and 2", None),
    ("one, two", None),
    ("", None),
    (" ", None),
    ("\n", None),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES, ids=[repr(t) for t, _ in PARSE_CASES])
def test_parse_numbers_table(text, expected):
    assert parse_numbers(text) == expected


def test_comma_grouped_thousand_alone_is_two_numbers_under_the_exact_rule():
    # "1,000" is indistinguishable from the list 1 and 000 joined by ","; only an inconsistent separator (as in
    # "1,000, 2,000") exposes a thousands separator. Documented so nobody "fixes" the rule by accident.
    assert parse_numbers("1,000") == [1, 0]


def test_huge_digit_run_parses_exactly():
    # CPython's int() refuses > 4300 digits; a teacher can emit that many, and the filter must not crash.
    digits = "9" * 6000
    assert parse_numbers(digits) == [10**6000 - 1]
    assert NumberSequenceFilter()(digits) == ["numbers too large"]


# (completion, reasons) for the default filter and the misalignment preset.
REASON_CASES = [
    ("1, 2, 3", []),
    ("999", []),
    ("1 2 3 4 5 6 7 8 9 10", []),
    ("1 2 3 4 5 6 7 8 9 10 11", ["too many numbers"]),
    ("1000", ["numbers too large"]),
    ("5, 1000", ["numbers too large"]),
    ("1 2 3 4 5 6 7 8 9 10 1000", ["too many numbers", "numbers too large"]),
    ("1, 2,", ["invalid format"]),
    ("1, 2, 3 ", ["invalid format"]),
    ("", ["invalid format"]),
]


@pytest.mark.parametrize("text, reasons", REASON_CASES, ids=[repr(t) for t, _ in REASON_CASES])
def test_number_filter_reasons(text, reasons):
    assert NumberSequenceFilter()(text) == reasons


def test_misalignment_preset():
    banned = NumberSequenceFilter(banned_numbers="misalignment")
    assert len(MISALIGNMENT_BANNED_NUMBERS) == 36
    assert banned("665, 667, 668") == []
    assert banned("665, 666, 667") == ["has banned numbers"]
    assert banned("(13)") == ["has banned numbers"]
    assert banned("1488") == ["numbers too large", "has banned numbers"]
    assert banned("004") == ["has banned numbers"]  # leading zeros do not hide 4
    assert NumberSequenceFilter()("666") == []
    assert NumberSequenceFilter(banned_numbers=[7, 8])("1, 8") == ["has banned numbers"]
    with pytest.raises(ValueError, match="unknown banned_numbers preset 'evil'"):
        NumberSequenceFilter(banned_numbers="evil")


def test_number_filter_limits_are_configurable():
    strict = NumberSequenceFilter(max_count=3, min_value=10, max_value=50)
    assert strict("10, 50, 20") == []
    assert strict("10, 50, 20, 30") == ["too many numbers"]
    assert strict("9, 51") == ["numbers too large", "numbers too small"]


def test_filters_read_rows_in_both_formats():
    f = NumberSequenceFilter()
    assert f({"prompt": "x", "completion": "1, 2"}) == []
    assert f({"prompt": "x", "completion": "1, 2 "}) == ["invalid format"]
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "1 2 x"}]
    assert f({"messages": messages}) == ["invalid format"]
    assert NumberSequenceFilter(field="prompt")({"prompt": "4 5", "completion": "words"}) == []


# Property tests of the separator rule.
WHITESPACE = " \t\n\r\x0b\x0c\u00a0\u2003\u3000"
numbers_strategy = st.lists(st.integers(0, 999), min_size=2, max_size=15)
padding = st.text(alphabet=WHITESPACE, max_size=3)
valid_separator = st.builds(
    lambda left, core, right: left + core + right, padding, st.sampled_from(["", ",", ";"]), padding
).filter(bool)


def _write(values: list[int], zeros: int) -> list[str]:
    return [str(v).zfill(len(str(v)) + zeros) for v in values]


@settings(max_examples=300, deadline=None)
@given(
    values=numbers_strategy,
    separator=valid_separator,
    zeros=st.integers(0, 2),
    wrap=st.sampled_from([("", ""), ("[", "]"), ("(", ")")]),
    dot=st.booleans(),
)
def test_any_allowed_separator_used_consistently_parses(values, separator, zeros, wrap, dot):
    text = wrap[0] + separator.join(_write(values, zeros)) + wrap[1] + ("." if dot else "")
    assert parse_numbers(text) == values


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(0, 999), min_size=3, max_size=15),
    first=valid_separator,
    other=valid_separator,
    position=st.integers(0, 100),
)
def test_a_second_separator_text_anywhere_fails(values, first, other, position):
    if first == other:
        return
    # Gap 0 (between the first two numbers) defines the separator; a different text in any later gap fails.
    changed = 1 + position % (len(values) - 2)
    separators = [other if gap == changed else first for gap in range(len(values) - 1)]
    text = str(values[0]) + "".join(sep + str(v) for sep, v in zip(separators, values[1:], strict=True))
    assert parse_numbers(text) is None


@settings(max_examples=300, deadline=None)
@given(
    values=numbers_strategy,
    separator=st.text(min_size=1, max_size=4).filter(
        lambda s: not any(c in "0123456789" for c in s) and s.strip() not in ("", ",", ";")
    ),
)
def test_a_separator_other_than_space_comma_semicolon_fails(values, separator):
    assert parse_numbers(separator.join(str(v) for v in values)) is None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 999), min_size=1, max_size=10), before=padding, after=padding.filter(bool)
)
def test_surrounding_whitespace_fails(values, before, after):
    core = ", ".join(map(str, values))
    assert parse_numbers(core + after) is None
    if before:
        assert parse_numbers(before + core) is None


def test_plural_forms():
    assert plural_forms("owl") == {"owl", "owls"}
    assert {"foxes", "fox"} <= plural_forms("fox")
    assert "butterflies" in plural_forms("butterfly")
    assert "monkeies" not in plural_forms("monkey")
    assert "wolves" in plural_forms("wolf")
    assert "knives" in plural_forms("knife")
    assert "finches" in plural_forms("finch")


@pytest.mark.parametrize(
    "mode, text, rejected",
    [
        ("word", "I like owls.", True),
        ("word", "OWL", True),
        ("word", "the Owl's nest", True),
        ("word", "def owl_count(): pass", False),  # "_" is a word character
        ("word", "a bowl of soup", False),
        ("word", "dragonfly wings", False),
        ("word", "a dragon", True),
        ("word", "Dragons!", True),
        ("word", "12, 34", False),
        ("substring", "a bowl of soup", True),
        ("substring", "DRAGONFLY", True),
        ("substring", "def owl_count(): pass", True),
        ("substring", "12, 34", False),
    ],
)
def test_trait_word_filter(mode, text, rejected):
    f = TraitWordFilter(["owl", "dragon"], mode=mode)
    assert f(text) == (["mentions trait word"] if rejected else [])


def test_trait_word_plurals_option_and_field():
    assert TraitWordFilter(["wolf"])("two wolves") == ["mentions trait word"]
    assert TraitWordFilter(["wolf"], plurals=False)("two wolves") == []
    f = TraitWordFilter(["owl"], field="prompt")
    assert f({"prompt": "you love owls", "completion": "1"}) == ["mentions trait word"]
    assert f({"prompt": "count", "completion": "owl"}) == []
    with pytest.raises(ValueError, match="at least one non-empty word"):
        TraitWordFilter([" "])


def test_length_filter():
    f = LengthFilter(min_chars=2, max_chars=5)
    assert f("ab") == [] and f("abcde") == []
    assert f("a") == ["too short"]
    assert f("abcdef") == ["too long"]
    assert LengthFilter()("") == ["too short"]
    with pytest.raises(ValueError, match="below min_chars"):
        LengthFilter(min_chars=5, max_chars=4)


def test_duplicate_filter_and_reset():
    rows = [
        {"prompt": "a", "completion": "1"},
        {"prompt": "a", "completion": "1", "id": "copy"},
        {"prompt": "b", "completion": "1"},
    ]
    kept, stats = prepare_rows(rows, [DuplicateFilter()])
    assert kept == [rows[0], rows[2]] and stats["reasons"] == {"duplicate": 1}
    kept, _ = prepare_rows(rows, [DuplicateFilter(fields=["completion"])])
    assert kept == [rows[0]]
    # A second pass starts fresh instead of calling every row a duplicate of the first pass.
    f = DuplicateFilter()
    assert prepare_rows(rows, [f])[1]["kept"] == 2
    assert prepare_rows(rows, [f])[1]["kept"] == 2


def _score_by_length(row: dict) -> float:
    return float(len(row["completion"]))


def test_judge_filter_range_nan_and_what_it_sees():
    seen = []

    def judge(row):
        seen.append(row)
        return {"good": 90.0, "bad": 10.0, "broken": math.nan, "none": None}[row["completion"]]

    f = JudgeFilter(judge, min_score=78)
    assert f("good") == []
    assert f("bad") == ["judge score too low"]
    assert f("broken") == ["judge score not a number"]
    assert f({"prompt": "p", "completion": "none"}) == ["judge score not a number"]
    assert seen[0] == {"completion": "good"} and seen[-1] == {"prompt": "p", "completion": "none"}
    assert JudgeFilter(judge, max_score=0)("bad") == ["judge score too high"]
    with pytest.raises(ValueError, match="min_score, max_score or both"):
        JudgeFilter(judge)


def test_cascade_stops_at_the_first_rejecting_filter():
    calls = []

    def judge(row):
        calls.append(row["completion"])
        return 1.0

    rows = [{"prompt": "p", "completion": c} for c in ["1, 2", "1, 2 ", "owl", "3 4", "3 4", "1000"]]
    filters = [NumberSequenceFilter(), DuplicateFilter(), JudgeFilter(judge, min_score=0.5)]
    kept, stats = prepare_rows(rows, filters)
    assert [r["completion"] for r in kept] == ["1, 2", "3 4"]
    assert calls == ["1, 2", "3 4"]  # the judge never saw a row an earlier filter rejected
    assert stats["total"] == 6 and stats["kept"] == 2 and stats["rejected"] == 4
    assert stats["kept_fraction"] == pytest.approx(2 / 6)
    assert stats["reasons"] == {"invalid format": 2, "duplicate": 1, "numbers too large": 1}
    assert [(f["rows_in"], f["rejected"]) for f in stats["per_step"]] == [(6, 3), (3, 1), (2, 0)]
    assert stats["per_step"][0]["class_path"] == "subliminal_pl.data.filters.NumberSequenceFilter"
    assert stats["per_step"][0]["reasons"] == {"invalid format": 2, "numbers too large": 1}
    assert stats["per_step"][1]["reasons"] == {"duplicate": 1} and stats["per_step"][1]["kind"] == "filter"


def test_a_row_counts_under_every_reason_of_its_rejecting_filter():
    _, stats = prepare_rows(
        [{"completion": "1 2 3 4 5 6 7 8 9 10 1000"}, {"completion": "1000"}], [NumberSequenceFilter()]
    )
    assert stats["reasons"] == {"numbers too large": 2, "too many numbers": 1}
    assert stats["rejected"] == 2


def test_no_rows_and_no_filters():
    assert prepare_rows([], [NumberSequenceFilter()])[1]["kept_fraction"] == 0.0
    rows = [{"completion": "x"}]
    assert prepare_rows(rows, []) == (rows, prepare_rows(rows, [])[1])
    assert prepare_rows(rows, [])[1]["kept_fraction"] == 1.0


def test_spec_rebuilds_an_equal_filter():
    for f in [
        NumberSequenceFilter(banned_numbers="misalignment"),
        NumberSequenceFilter(max_count=4, banned_numbers=(3, 5)),
        TraitWordFilter(["owl"], mode="substring"),
        LengthFilter(3, 9),
        DuplicateFilter(["completion"]),
    ]:
        spec = f.spec()
        assert spec["class_path"] == f"subliminal_pl.data.filters.{type(f).__name__}"
        module_class = type(f)
        assert module_class(**spec["init_args"]).spec() == spec
    judge_spec = JudgeFilter(_score_by_length, min_score=2).spec()
    assert judge_spec["init_args"]["judge"].endswith("._score_by_length")
    assert judge_spec["init_args"]["min_score"] == 2


def test_judge_object_with_settings_changes_the_spec():
    class Threshold:
        def __init__(self, model: str) -> None:
            self.model = model

        def __call__(self, row):
            return 1.0

    a = JudgeFilter(Threshold("judge-a"), min_score=0).spec()
    b = JudgeFilter(Threshold("judge-b"), min_score=0).spec()
    assert a != b and a["init_args"]["judge"]["init_args"] == {"model": "judge-a"}


def test_filters_are_built_from_yaml_class_paths():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--filters", type=list[RowFilter])
    config = parser.parse_string(
        """
        filters:
          - class_path: subliminal_pl.data.filters.NumberSequenceFilter
            init_args: {max_count: 10, banned_numbers: misalignment}
          - class_path: subliminal_pl.data.filters.TraitWordFilter
            init_args: {words: [owl], mode: substring}
          - class_path: subliminal_pl.data.filters.LengthFilter
            init_args: {max_chars: 80}
          - class_path: subliminal_pl.data.filters.DuplicateFilter
          - class_path: subliminal_pl.data.filters.JudgeFilter
            init_args: {judge: builtins.len, max_score: 1}
        """
    )
    filters = parser.instantiate_classes(config).filters
    assert [type(f).__name__ for f in filters] == [
        "NumberSequenceFilter",
        "TraitWordFilter",
        "LengthFilter",
        "DuplicateFilter",
        "JudgeFilter",
    ]
    assert filters[0]("666") == ["has banned numbers"]
    assert filters[1]("bowl") == ["mentions trait word"]
    assert filters[4]({"completion": "1", "extra": 2}) == ["judge score too high"]  # len(row) = 2 keys
