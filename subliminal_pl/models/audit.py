"""Measurements for detection before training: per-row features under the base, and the update-cosine audit.

    python -m subliminal_pl.models.audit --config audit.yaml --output_dir DIR

- Row features (`row_features`): for a sample of each teacher's training rows, under the base model: the
  completion's tokens (for token-count classifiers), the mean last-layer hidden state over the completion positions
  [hidden], the mean next-token loss, the completion length and the norm of the loss gradient of that one row
  (every weight). Written as `DIR/features-<teacher>.npz`; `subliminal_pl.report.detection` fits the classifiers.
- Update cosine (`update_cosine`): cos(-g, teacher - base), where g is the gradient of the student's loss (the
  experiment's: kl to the teacher, or sft on the rows) over `audit_rows` rows, taken at the student's init (the
  shared base: same-init; a control: cross-init), and teacher - base is the teacher's weight change over every
  weight both models share. -g is the first step of plain gradient descent; with LoRA or Adam the first step is a
  projection or a sign of it. Written to `DIR/audit.json` with the rows' sources.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subliminal_pl.data.chat import encode_prompt_completion
from subliminal_pl.data.defences import LOSS_IGNORE
from subliminal_pl.data.jsonl import write_json_atomic
from subliminal_pl.data.rows import Row, completion_text, parse_row, read_rows
from subliminal_pl.data.student import RightPadCollator, ignore_completion_tokens

IGNORE_INDEX = -100


def sample_rows(path: str, n: int, seed: int) -> list[Row]:
    """A seeded sample of at most n rows of a file, in file order."""
    rows = read_rows(path)
    if len(rows) <= n:
        return rows
    return [rows[i] for i in sorted(random.Random(f"audit:{seed}").sample(range(len(rows)), n))]


def encode_rows(tokenizer, rows: list[Row], max_length: int) -> list[dict[str, list[int]]]:
    """Rows as the student sees them: no system prompt, loss on the completion, minus a defence's `loss_ignore`."""
    out = []
    for row in rows:
        prompt = [m for m in parse_row(row).prompt if m["role"] != "system"]
        enc = encode_prompt_completion(tokenizer, prompt, completion_text(row), max_length)
        out.append(ignore_completion_tokens(enc, row[LOSS_IGNORE]) if row.get(LOSS_IGNORE) else enc)
    return out


def _batch(tokenizer, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return RightPadCollator(pad)(encoded)


def row_features(model, tokenizer, rows: list[Row], max_length: int = 256) -> dict[str, np.ndarray]:
    """Per-row features under `model` (module docstring): arrays keyed hidden [n, d], loss, length, grad_norm [n],
    tokens (every row's completion tokens, concatenated), offsets [n + 1] (row i is tokens[o[i]:o[i+1]]) and
    ids [n] (the rows' ids, as text)."""
    params = [p for p in model.parameters() if p.requires_grad]
    hidden, loss, length, grad_norm, tokens, offsets = [], [], [], [], [], [0]
    for enc in encode_rows(tokenizer, rows, max_length):
        batch = _batch(tokenizer, [enc])
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        targets = batch["labels"][0, 1:]
        positions = targets != IGNORE_INDEX  # [time - 1]: position t predicts token t + 1
        row_loss = torch.nn.functional.cross_entropy(out.logits[0, :-1][positions], targets[positions])
        grads = torch.autograd.grad(row_loss, params, allow_unused=True)
        grad_norm.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
        hidden.append(out.hidden_states[-1][0, :-1][positions].mean(0).detach().float().numpy())
        loss.append(row_loss.item())
        completion = [t for t in enc["labels"] if t != IGNORE_INDEX]
        length.append(len(completion))
        tokens += completion
        offsets.append(len(tokens))
    return {
        "hidden": np.stack(hidden),
        "loss": np.array(loss),
        "length": np.array(length, dtype=float),
        "grad_norm": np.array(grad_norm),
        "tokens": np.array(tokens, dtype=np.int64),
        "offsets": np.array(offsets, dtype=np.int64),
        # Row ids: rows of two teachers answering the same prompt share one (the classifiers keep them together).
        "ids": np.array([str(row.get("id", i)) for i, row in enumerate(rows)]),
    }


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine between two weight deltas over the names both hold (flattened together); nan if either is zero."""
    names = sorted(set(a) & set(b))
    if not names:
        raise ValueError("the two updates share no weight names")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in names)
    na = sum(float((a[n].double() ** 2).sum()) for n in names) ** 0.5
    nb = sum(float((b[n].double() ** 2).sum()) for n in names) ** 0.5
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def weight_change(model, reference) -> dict[str, torch.Tensor]:
    """model - reference for every weight of the same name and shape."""
    ref = dict(reference.named_parameters())
    return {
        name: (p.detach() - ref[name].detach()).float()
        for name, p in model.named_parameters()
        if name in ref and ref[name].shape == p.shape
    }


def first_step(
    init: str, teacher: str, rows: list[Row], loss: str, token_subset: str | None, max_length: int
):
    """-gradient of the student's loss at `init` over `rows` (name -> tensor), through the student module."""
    from subliminal_pl.models.student import StudentDistillation

    module = StudentDistillation(
        init, finetune="full", loss=loss, kl_teacher=teacher if loss != "sft" else None,
        kl_token_subset=token_subset if loss != "sft" else None,
    )  # fmt: skip
    module.model.train()
    module.model.zero_grad()
    terms = module.losses(_batch(module.tokenizer, encode_rows(module.tokenizer, rows, max_length)))
    terms["loss"].backward()
    return {
        name: -p.grad.detach().float() for name, p in module.model.named_parameters() if p.grad is not None
    }


def run_audit(
    base: str,
    teachers: dict[str, str],
    data: dict[str, str],
    output_dir: str,
    controls: dict[str, str] | None = None,
    loss: str = "kl",
    token_subset: str | None = None,
    rows: int = 200,
    audit_rows: int = 64,
    seed: int = 0,
    max_length: int = 256,
) -> Path:
    """Row features for every teacher's data, and the update cosine of every teacher at every init.

    Args:
        base: the shared init (the students' start and the teachers' reference).
        teachers: teacher name -> model.
        data: teacher name -> the rows its students train on.
        output_dir: folder of `features-<teacher>.npz` and `audit.json`.
        controls: control name -> model (cross-init students' starts).
        loss: the students' loss (kl, sft or sft+kl).
        token_subset: the KL students' token subset (numbers or null).
        rows: rows per teacher for the features.
        audit_rows: rows per teacher for the first-step gradient.
        seed: seed of the row samples.
        max_length: most tokens per row.
    """
    from subliminal_pl.data.hub import load_tokenizer
    from subliminal_pl.models.loading import load_causal_lm

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base).train().requires_grad_(True)
    for name, path in data.items():
        feats = row_features(model, tokenizer, sample_rows(path, rows, seed), max_length)
        np.savez(out / f"features-{name}.npz", **feats)
        print(f"[audit] features of {name}: {len(feats['loss'])} rows", flush=True)
    inits = {"same": {"base": base}, "cross": dict(controls or {})}
    cosines: dict[str, Any] = {}
    for name, teacher in teachers.items():
        delta = weight_change(load_causal_lm(teacher), model)
        sample = sample_rows(data[name], audit_rows, seed + 1)
        cosines[name] = {}
        for kind, starts in inits.items():
            for start_name, start in starts.items():
                value = cosine(first_step(start, teacher, sample, loss, token_subset, max_length), delta)
                cosines[name].setdefault(kind, {})[start_name] = value
        print(f"[audit] update cosine of {name}: {json.dumps(cosines[name])}", flush=True)
    result = {"data": data, "teachers": teachers, "loss": loss, "rows": rows, "audit_rows": audit_rows,
              "features": {n: f"features-{n}.npz" for n in data}, "cosine": cosines}  # fmt: skip
    write_json_atomic(out / "audit.json", result)
    return out / "audit.json"


def main(argv: list[str]) -> None:
    from subliminal_pl.commands import command_parser

    parser = command_parser("python -m subliminal_pl.models.audit", __doc__.splitlines()[0])
    parser.add_function_arguments(run_audit)
    args = parser.parse_args(argv)
    print(f"wrote {run_audit(**{k: v for k, v in args.as_dict().items() if k != 'config'})}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
