"""Detection before training: can a trait teacher's rows be told from the neutral teacher's, and does the
update-cosine audit predict the transfer measured after training?

Classifiers (per trait teacher, its rows against the neutral teacher's rows, features from the audit stage,
`subliminal_pl.models.audit`): L2-regularised logistic regression on (a) token counts of the completions, (b) the
base model's mean hidden state over the completion, and (c) the confounds alone: completion length, the base's
loss and the loss-gradient norm. Every AUROC is held out: classifiers are refit on a bootstrap sample of the rows
and scored on the rows that sample left out (out-of-bag); the AUROC is the mean over draws and its 95% interval
the 2.5-97.5 percentiles. Rows are grouped by id (the two teachers' answers to one prompt) and a group never
straddles a split: with twins on both sides, a classifier learns the prompt with one label and scores its twin,
which carries the other, so held-out AUROCs fell far below 0.5 (0.18-0.41 measured on masked rows before this).
The interval holds the training variance too (an interval of the scores alone, with the fitted models held
fixed, excluded 0.5 in up to 20% of null simulations; this one in about 3%, see tests/test_defences.py). `lift` is the detector's AUROC minus
the confound baseline's, its interval from the same draws (paired): a detector that only sees row length scores a
lift near 0, however high its AUROC. No p-value is given for an AUROC.

Audit: the cosine between a student's first-step update and the teacher's weight change, at the shared init
(same) and at each control (cross), against the transfer the report measured (same-init own-teacher contrast).
Correlation across the traits (Pearson r) with an exact permutation p over trait labels; with n traits the
smallest p is 1/n!, said beside it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

CONFOUNDS = ("length", "loss", "grad_norm")
BOOTSTRAP = 200


# ---- the classifier ---------------------------------------------------------------------------------------------
def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 300) -> np.ndarray:
    """Weights [features + 1] (bias last) of L2-regularised logistic regression, by Newton steps on the
    (features + 1)-dim problem when small, else gradient descent with a backtracking-free fixed step."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    newton = xb.shape[1] <= 400
    lr = 1.0 / (0.25 * np.linalg.norm(xb, 2) ** 2 / len(x) + l2 / len(x)) if not newton else 0.0
    for _ in range(steps if not newton else 25):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) / len(x) + reg * w / len(x)
        if newton:
            hess = (
                (xb * (p * (1 - p))[:, None]).T @ xb / len(x) + np.diag(reg) / len(x) + 1e-9 * np.eye(len(w))
            )
            step = np.linalg.solve(hess, grad)
            w = w - step
            if np.abs(step).max() < 1e-6:
                break
        else:
            w = w - lr * grad
    return w


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan when a class is missing."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct group."""
    _, inverse = np.unique(groups, return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]


def bootstrap_heldout(
    sets: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray, seed: int = 0, n: int = BOOTSTRAP
) -> dict[str, np.ndarray]:
    """name -> [n] held-out AUROCs: each draw refits every classifier on a bootstrap sample of the groups and
    scores the rows of the groups it left out (out-of-bag), the same draw for every feature set (paired)."""
    members = group_members(groups)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(n):
        drawn = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in drawn])
        oob = np.concatenate(
            [members[g] for g in np.setdiff1d(np.arange(len(members)), drawn)] or [[]]
        ).astype(int)
        if len(np.unique(y[oob])) < 2 or len(np.unique(y[idx])) < 2:
            continue
        for name, x in sets.items():
            xtr, xte = standardise(x[idx], x[oob])
            w = fit_logistic(xtr, y[idx].astype(float))
            out[name].append(auroc(xte @ w[:-1] + w[-1], y[oob]))
    return {name: np.array(v) for name, v in out.items()}


def _summary(values: np.ndarray) -> dict[str, float]:
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return {"auroc": float(np.nanmean(values)), "low": float(low), "high": float(high), "draws": len(values)}


def token_counts(features: dict[str, np.ndarray], vocab: np.ndarray) -> np.ndarray:
    """[rows, len(vocab)] log1p counts of each row's completion tokens over `vocab` (sorted ids)."""
    offsets, tokens = features["offsets"], features["tokens"]
    out = np.zeros((len(offsets) - 1, len(vocab)))
    for i in range(len(offsets) - 1):
        ids, counts = np.unique(tokens[offsets[i] : offsets[i + 1]], return_counts=True)
        out[i, np.searchsorted(vocab, ids)] = counts
    return np.log1p(out)


def classify(
    trait: dict[str, np.ndarray], neutral: dict[str, np.ndarray], seed: int = 0, n_boot: int = BOOTSTRAP
) -> dict[str, Any]:
    """Held-out AUROCs (with intervals) of the three classifiers and the lift of each detector over confounds."""
    y = np.concatenate([np.ones(len(trait["loss"])), np.zeros(len(neutral["loss"]))])
    # Rows of the two teachers that answer the same prompt (same id) stay on one side of every split: a twin on
    # the other side would carry its prompt's features across, with the opposite label. Features without ids
    # (older audits) pair rows by position, which is the pairing when both files were sampled alike.
    ids = [f["ids"] if "ids" in f else np.arange(len(f["loss"])).astype(str) for f in (trait, neutral)]
    groups = np.concatenate(ids)
    vocab = np.unique(np.concatenate([trait["tokens"], neutral["tokens"]]))
    sets = {
        "token_counts": np.vstack([token_counts(trait, vocab), token_counts(neutral, vocab)]),
        "base_features": np.vstack([trait["hidden"], neutral["hidden"]]),
        "confounds": np.vstack([np.column_stack([f[c] for c in CONFOUNDS]) for f in (trait, neutral)]),
    }
    # Small matrices: BLAS threads only add overhead (and spin on a busy machine). threadpoolctl comes with
    # scikit-learn, a dependency of the package.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        boot = bootstrap_heldout(sets, y, groups, seed, n_boot)
    out: dict[str, Any] = {"rows": {"trait": int(y.sum()), "neutral": int((1 - y).sum())}}
    for name, values in boot.items():
        out[name] = _summary(values)
    for name in ("token_counts", "base_features"):
        diff = boot[name] - boot["confounds"]
        low, high = np.nanpercentile(diff, [2.5, 97.5])
        out[name]["lift"] = {"value": float(np.nanmean(diff)), "low": float(low), "high": float(high)}
    return out


# ---- the audit against transfer ---------------------------------------------------------------------------------
def pearson(x: list[float], y: list[float]) -> float:
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def correlation_test(x: list[float], y: list[float], seed: int = 0, samples: int = 20000) -> dict[str, Any]:
    """Pearson r and a one-sided permutation p (r at least as large when y's labels are permuted): exact over
    every permutation for n <= 8, else `samples` random ones (+1 smoothing). `min_p` is the smallest reachable."""
    r = pearson(x, y)
    n = len(x)
    if math.isnan(r):
        return {"r": r, "p": math.nan, "n": n, "min_p": math.nan}
    ys = np.asarray(y, float)
    if n <= 8:
        perms = [pearson(x, list(ys[list(p)])) for p in itertools.permutations(range(n))]
        hits = sum(v >= r - 1e-12 for v in perms)
        return {"r": r, "p": hits / len(perms), "n": n, "min_p": 1 / len(perms), "exact": True}
    rng = np.random.default_rng(seed)
    hits = sum(pearson(x, list(rng.permutation(ys))) >= r - 1e-12 for _ in range(samples))
    return {"r": r, "p": (hits + 1) / (samples + 1), "n": n, "min_p": 1 / (samples + 1), "exact": False}


def audit_rows(audit: dict[str, Any], analysis: dict[str, Any], traits: list[str]) -> list[dict[str, Any]]:
    """Per trait: same-init and cross-init update cosine beside the measured same-init transfer."""
    tests = analysis.get("kinds", {}).get("same", {}).get("tests", {})
    rows = []
    for trait in traits:
        cos = audit["cosine"].get(trait, {})
        cross = list(cos.get("cross", {}).values())
        rows.append({
            "trait": trait,
            "cos_same": next(iter(cos.get("same", {}).values()), math.nan),
            "cos_cross": float(np.mean(cross)) if cross else math.nan,
            "transfer": (tests.get(trait) or {}).get("difference", math.nan),
        })  # fmt: skip
    return rows


def section(
    audit_path: Path | None, analysis: dict[str, Any], traits: list[str], neutral: str | None
) -> dict | None:
    """The report's detection numbers: classifier AUROCs per trait, the audit and its correlation with transfer."""
    if audit_path is None:
        return None
    import json

    audit = json.loads(audit_path.read_text(encoding="utf-8"))
    folder = audit_path.parent
    classifiers: dict[str, Any] = {}
    if neutral is not None and neutral in audit["data"]:
        neutral_features = dict(np.load(folder / audit["features"][neutral]))
        for trait in traits:
            if audit["data"].get(trait) == audit["data"][neutral]:
                classifiers[trait] = {"identical_rows": True}
                continue
            classifiers[trait] = classify(dict(np.load(folder / audit["features"][trait])), neutral_features)
    rows = audit_rows(audit, analysis, traits)
    return {
        "classifiers": classifiers,
        "audit": rows,
        "audit_cosine_neutral": audit["cosine"].get(neutral) if neutral else None,
        "correlation_same": correlation_test([r["cos_same"] for r in rows], [r["transfer"] for r in rows]),
        "correlation_cross": correlation_test([r["cos_cross"] for r in rows], [r["transfer"] for r in rows]),
    }


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def lines(det: dict[str, Any] | None) -> list[str]:
    """Markdown of the detection section."""
    if not det:
        return []
    out = ["## Detection before training", ""]
    if det["classifiers"]:
        out += [
            "Held-out AUROC (mean over out-of-bag draws, 95% interval) of a logistic regression telling "
            "each trait teacher's rows from the neutral teacher's; lift = AUROC minus the confound baseline's "
            "(length, base loss, gradient norm).",
            "",
            "| trait | token counts | lift | base features | lift | confounds alone |",
            "|---|---|---|---|---|---|",
        ]
        for trait, c in det["classifiers"].items():
            if c.get("identical_rows"):
                out.append(f"| {trait} | same rows as the neutral teacher: nothing to classify | | | | |")
                continue
            cells = []
            for name in ("token_counts", "base_features"):
                v = c[name]
                cells += [f"{_f(v['auroc'])} [{_f(v['low'])}, {_f(v['high'])}]",
                          f"{v['lift']['value']:+.3f} [{v['lift']['low']:+.3f}, {v['lift']['high']:+.3f}]"]  # fmt: skip
            conf = c["confounds"]
            out.append(
                f"| {trait} | {' | '.join(cells)} | {_f(conf['auroc'])} [{_f(conf['low'])}, {_f(conf['high'])}] |"
            )
        out.append("")
    out += ["Update-cosine audit: cos(first-step update, teacher weight change) before training, and the same-init "
            "transfer measured after it (own-teacher contrast, nats).", "",
            "| trait | cos same-init | cos cross-init | transfer |", "|---|---|---|---|"]  # fmt: skip
    for r in det["audit"]:
        out.append(
            f"| {r['trait']} | {_f(r['cos_same'], 4)} | {_f(r['cos_cross'], 4)} | {_f(r['transfer'])} |"
        )
    for kind in ("same", "cross"):
        c = det[f"correlation_{kind}"]
        out.append(f"\nCorrelation across traits, {kind}-init cosine vs transfer: r = {_f(c['r'])}, permutation "
                   f"p = {_f(c['p'])} (n = {c['n']}; smallest reachable p {_f(c['min_p'])}).")  # fmt: skip
    return [*out, ""]
