"""The experiment report: did each trait move into the students that share the teacher's init, and only those?

`python -m subliminal_pl.report --manifest M --output_dir D` reads a manifest (`subliminal_pl.report.manifest`)
and the probe results it names (`subliminal_pl.probes.results`, either format) and writes into D:

- `results.json`: every number of the report, plus per-student values;
- `report.md`: verdicts, the matrices, per-trait tests with effect sizes and Holm-adjusted p, column drift,
  the models (bases, teachers, controls: sampled rates, format pass rates), judges, filters, MLP;
- `matrix.png`, `traits.png`, `drift.png` (when students were probed by log-probability), `mlp.png`;
- with a misalignment probe: its section (`report.misalignment`: rates per model, drops, judge) and
  `misalignment.png`.

The numbers come from `analysis` (statistics in `subliminal_pl.stats`), the text from `render`, the figures from
`plots`. The test and its contrast are explained in docs/statistics.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_json_atomic, write_text_atomic
from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report import analysis, defences, detection, in_context, misalignment, plots, render
from subliminal_pl.report.manifest import Manifest


def _resolve(path: str, manifest_path: Path) -> Path:
    """A path named in the manifest: as written, or relative to the manifest's folder."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else manifest_path.parent / p


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the {what} ({err})") from err


def build_results(manifest: Manifest, probes: ProbeResults, manifest_path: Path) -> dict[str, Any]:
    """Every number of the report (the content of results.json)."""
    contexts = probes.contexts
    main_context = "plain" if "plain" in contexts else (contexts[0] if contexts else None)
    analyses = {c: analysis.analyse(manifest, probes, c) for c in contexts}
    traits = [t for t in manifest.traits if t in [w.lower() for w in probes.candidates]]
    empty = {
        "context": None,
        "measure": None,
        "untested_traits": manifest.traits,
        "kinds": {},
        "verdicts": {},
    }
    words = [w.lower() for w in probes.candidates]
    mlp = None
    if manifest.mlp_results:
        mlp = _read_json(_resolve(manifest.mlp_results, manifest_path), "MLP results")
    return {
        "config": manifest.config,
        "traits": traits,
        "alpha": analysis.ALPHA,
        "control_alpha": analysis.CONTROL_ALPHA,
        "analysis": analyses.get(main_context, empty),
        "other_contexts": {c: a for c, a in analyses.items() if c != main_context},
        "models": analysis.models_table(manifest, probes, words, main_context),
        "student_rates": analysis.student_rates(manifest, probes),
        "judges": analysis.judges(probes),
        "misalignment": misalignment.summarise(manifest, probes),
        "filter": {
            source: _read_json(_resolve(path, manifest_path), f"filter stats of {source!r}")
            for source, path in manifest.filter_stats.items()
        },
        "mlp": mlp,
        "in_context": in_context.in_context_results(manifest, probes),
        "defence": defences.section(manifest, probes, lambda p: _resolve(p, manifest_path)),
        "detection": detection.section(
            _resolve(manifest.audit, manifest_path) if manifest.audit else None,
            analyses.get(main_context, empty),
            traits,
            manifest.neutral,
        ),
    }


def write_report(manifest_path: str | Path, output_dir: str | Path) -> Path:
    """Read the manifest and the files it names; write results.json, report.md and the plots into `output_dir`."""
    manifest_path = Path(manifest_path)
    manifest = Manifest.read(manifest_path)
    probes = ProbeResults.read(_resolve(manifest.probes, manifest_path))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = build_results(manifest, probes, manifest_path)
    figures = [p.name for p in plots.plot(results["analysis"], results["traits"], out)]
    figures += [p.name for p in misalignment.plot(results["misalignment"], out)]
    if manifest.mlp_results:
        figure = _resolve(manifest.mlp_results, manifest_path).with_suffix(".png")
        if figure.is_file():
            (out / "mlp.png").write_bytes(figure.read_bytes())
            figures.append("mlp.png")
    write_json_atomic(out / "results.json", results)
    text = render.markdown(manifest.title, results, figures)
    section = misalignment.markdown(results["misalignment"])
    if section:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    write_text_atomic(out / "report.md", text)
    return out / "report.md"


def write_sweep_summary(results: dict[str, Path], output_dir: str | Path) -> Path:
    """`sweep.md` + `sweep.json`: per variant and trait, same/cross-init own-teacher mean, difference and p."""
    rows = {}
    for name, path in results.items():
        data = _read_json(Path(path), "report results")
        kinds, verdicts = data["analysis"]["kinds"], data["analysis"]["verdicts"]
        rows[name] = {
            b: {
                kind: {k: t.get(k) for k in ("difference", "p_value", "p_holm")} | {"own": t["own"]["mean"]}
                for kind in ("same", "cross")
                if (t := kinds.get(kind, {}).get("tests", {}).get(b))
            }
            | {"transferred": verdicts[b]["transferred"] and verdicts[b]["cross_init_flat"] is not False}
            for b in data["traits"]
        }
    out_dir = Path(output_dir)
    write_json_atomic(out_dir / "sweep.json", rows)
    path = out_dir / "sweep.md"
    write_text_atomic(path, render.sweep_markdown(rows))
    return path


def code_hash() -> str:
    """Hash of the report's code (this package and `subliminal_pl.stats`): a pipeline puts it in the report
    stage's config so that a change to the analysis reruns the report and nothing else."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in [*sorted(root.glob("*.py")), root.parent / "stats.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="python -m subliminal_pl.report", description=__doc__.splitlines()[0], default_env=False
    )
    parser.add_argument("--manifest", type=str, required=True, help="manifest.json written by the pipeline")
    parser.add_argument(
        "--output_dir", type=str, required=True, help="folder for report.md, results.json, PNGs"
    )
    args = parser.parse_args(argv)
    print(f"wrote {write_report(args.manifest, args.output_dir)}")
