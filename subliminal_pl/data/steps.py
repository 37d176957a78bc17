"""Data steps: the one route from raw teacher rows to the rows a student trains on.

A data step is a filter (drops rows, with reject reasons; `subliminal_pl.data.filters`) or a transform (rewrites
rows, e.g. shuffles the numbers of each completion; `subliminal_pl.data.transforms`). Both are small typed classes
that a recipe lists by `class_path` + `init_args`, and both return that form from `spec()`, which is hashed to name
derived files.

`prepare_rows(rows, steps)` applies the steps in order and counts what each one did; `prepare_file` reads a raw
file with the one row reader, runs `prepare_rows` and writes the kept rows and their stats atomically. The student
DataModule and the pipeline's data stage (`python -m subliminal_pl.stages filter`) both call `prepare_file`, so the
same raw file and steps give the same rows either way. The raw file is only read.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from subliminal_pl.data.jsonl import DataError, sha256_file, write_json_atomic, write_jsonl_atomic
from subliminal_pl.data.rows import Row, read_rows


def _primitive(value: Any) -> Any:
    """A JSON-ready, deterministic description of an init argument (for the config hash)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _primitive(v) for k, v in value.items()}
    return describe_callable(value)


def describe_callable(obj: Any) -> Any:
    """How a judge (or other callable argument) enters a step's spec.

    An object with a `spec()` method describes itself; a function is named by its import path; any other object by
    its class path and its primitive attributes. A judge whose behaviour depends on anything else should define
    `spec()`, or the derived file of an old judge could be reused.
    """
    if hasattr(obj, "spec") and callable(obj.spec):
        return obj.spec()
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    attributes = {
        k: _primitive(v)
        for k, v in sorted(vars(obj).items() if hasattr(obj, "__dict__") else ())
        if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str, list, tuple, dict)))
    }
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": attributes}


class DataStep(ABC):
    """Base class of filters and transforms: `apply` maps a list of rows to the rows that go on.

    Subclasses keep every init argument as an attribute of the same name, which is what `spec()` reads.
    """

    kind: ClassVar[str]  # "filter" or "transform", as the stats name it

    @abstractmethod
    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        """(rows that go on, counters of this step). Never modify the input rows: build new dicts instead.

        Counters are step-specific; `reasons` (rows dropped per reason) is summed into the run's reasons.
        """

    def reset(self) -> None:
        """Forget state from earlier rows; `prepare_rows` calls this before each pass (see DuplicateFilter)."""
        return None  # stateless steps have nothing to forget

    def spec(self) -> dict[str, Any]:
        """`{"class_path", "init_args"}` of this step, as a recipe would write it."""
        cls = type(self)
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {name: _primitive(getattr(self, name)) for name in names},
        }


def step_specs(steps: Sequence[DataStep]) -> list[dict[str, Any]]:
    """The specs of a step list, in order (what derived file names hash)."""
    return [s.spec() for s in steps]


def sorted_counts(counts: Counter[str]) -> dict[str, int]:
    """Counts as a dict, most frequent first, ties by name (stable, readable stats files)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def prepare_rows(rows: Iterable[Row], steps: Sequence[DataStep]) -> tuple[list[Row], dict[str, Any]]:
    """Apply the steps in order and return (rows out, stats); the input rows are not modified.

    A row a filter drops never reaches a later step (an expensive judge placed last only sees rows the cheap
    filters kept). stats: `total` (rows in), `kept` (rows out), `rejected` (total - kept), `kept_fraction`
    (kept / total; 0 for no rows), `reasons` (dropped rows per reason, over all steps; a row counts under every
    reason of the step that dropped it), `per_step` (per step, in order: `class_path`, `kind`, `rows_in`,
    `rows_out`, `rejected` and the step's own counters, e.g. a filter's `reasons`, a transform's `changed`) and
    `steps` (the specs).
    """
    current = list(rows)
    total = len(current)
    reasons: Counter[str] = Counter()
    per_step = []
    for step in steps:
        if not isinstance(step, DataStep):
            raise TypeError(f"data steps must be filters or transforms (DataStep), got {type(step).__name__}")
        step.reset()
        rows_in = len(current)
        current, counters = step.apply(list(current))
        reasons.update(counters.get("reasons", {}))
        per_step.append(
            {
                "class_path": step.spec()["class_path"],
                "kind": step.kind,
                "rows_in": rows_in,
                "rows_out": len(current),
                "rejected": rows_in - len(current),
                **counters,
            }
        )
    stats = {
        "total": total,
        "kept": len(current),
        "rejected": total - len(current),
        "kept_fraction": len(current) / total if total else 0.0,
        "reasons": sorted_counts(reasons),
        "per_step": per_step,
        "steps": step_specs(steps),
    }
    return current, stats


def default_stats_path(output_path: str | Path) -> Path:
    """`<output stem>.filter_stats.json` beside the output rows (what the report's manifest points to)."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name.removesuffix(".jsonl") + ".filter_stats.json")


def prepare_file(
    raw_path: str | Path,
    output_path: str | Path,
    steps: Sequence[DataStep],
    stats_path: str | Path | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read and validate every raw row, apply the steps, write the rows out and the stats (last), atomically.

    Args:
        raw_path: raw prompt-completion JSONL (only read).
        output_path: JSONL of the rows that come out of the steps; must not be the raw file.
        steps: filters and transforms, applied in order.
        stats_path: stats JSON (default: `default_stats_path(output_path)`).
        record: extra keys stored in the stats (e.g. the DataModule's `config_hash`).

    Returns the stats: `raw_path`, `raw_sha256`, the `record` keys, `filtered_path` and `prepare_rows`' stats.
    Raises `DataError` for a bad row (file:line: field), and when no row is left (after writing the stats, so
    the reject reasons can be read).
    """
    raw_path, output_path = Path(raw_path), Path(output_path)
    stats_path = Path(stats_path) if stats_path is not None else default_stats_path(output_path)
    if output_path.resolve() == raw_path.resolve() or stats_path.resolve() == raw_path.resolve():
        raise DataError(
            f"{output_path}: the output would overwrite the raw file {raw_path}; raw files are kept"
        )
    # Validate every row before any step, so a bad row is reported even when a filter would drop it.
    rows = read_rows(raw_path)
    kept, counts = prepare_rows(rows, steps)
    stats = {
        "raw_path": str(raw_path),
        "raw_sha256": sha256_file(raw_path),
        **(record or {}),
        "filtered_path": str(output_path),
        **counts,
    }
    if not kept:
        write_json_atomic(stats_path, stats)
        reasons = (
            ", ".join(f"{reason}: {n}" for reason, n in counts["reasons"].items()) or "the file is empty"
        )
        raise DataError(
            f"{raw_path}: no row survived filtering ({counts['total']} rows; {reasons}); see {stats_path}"
        )
    write_jsonl_atomic(output_path, kept)
    # The stats file is written last: its presence marks a complete pair for reuse.
    write_json_atomic(stats_path, stats)
    return stats
