"""Benchmark: a training step with logits at completion positions only vs logits at every position, in one process.

Both paths train the same model on the same right-padded batches with the same loss (cross-entropy of the
completion tokens); one runs the vocabulary head on the completion positions only (`PositionLogits`, what the
student module does), the other on every position and then selects (`PositionLogits` with the shortcut off).
Both must give the same losses and gradients (checked). Rounds alternate and the best round of each counts, since
other jobs on a shared machine inflate times; CPU time of this process is the steadier measure.

    python bench/bench_logits.py                      # the toy demo's shape and a 32k-vocabulary model
    python bench/bench_logits.py --threads 2 --rounds 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from subliminal_pl.models.logits import PositionLogits  # noqa: E402

# (label, vocab, hidden, layers, batch, prompt tokens, completion tokens): the toy demo's base, and a larger vocab.
SHAPES = [
    ("toy demo (vocab 3290, d 96, 3 layers)", 3290, 96, 3, 64, 45, 20),
    ("vocab 32000, d 256, 4 layers", 32000, 256, 4, 16, 60, 30),
]


def batches(vocab: int, batch: int, prompt: int, completion: int, n: int, seed: int = 0):
    """Right-padded rows of varying length; completion = the last `completion` real tokens of each row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(prompt // 2 + completion, prompt + completion + 1, (batch,), generator=g)
        width = int(lengths.max())
        ids = torch.randint(4, vocab, (batch, width), generator=g)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        labels = torch.full_like(ids, -100)
        for row, length in enumerate(lengths.tolist()):
            labels[row, length - completion : length] = ids[row, length - completion : length]
        out.append((ids, mask, labels))
    return out


def train(model, data, fast: bool) -> tuple[float, list[float]]:
    """CPU seconds per step and the losses, for SFT steps with plain SGD (so both paths see identical weights)."""
    logits_of = PositionLogits(model)
    logits_of.fast = fast
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses, start = [], time.process_time()
    for ids, mask, labels in data:
        positions = labels[:, 1:] != -100
        loss = F.cross_entropy(logits_of(ids, mask, positions).float(), labels[:, 1:][positions])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return (time.process_time() - start) / len(data), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each counts")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for label, vocab, hidden, layers, batch, prompt, completion in SHAPES:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
        )
        torch.manual_seed(0)
        init = LlamaForCausalLM(config).state_dict()
        data = batches(vocab, batch, prompt, completion, args.steps)
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.rounds):
            losses = {}
            for fast in (False, True):
                model = LlamaForCausalLM(config)
                model.load_state_dict(init)
                seconds, losses[fast] = train(model.train(), data, fast)
                best[fast] = min(best[fast], seconds)
            torch.testing.assert_close(losses[True], losses[False], atol=1e-4, rtol=1e-4)
        tokens = sum(int(m.sum()) for _, m, _ in data)
        scored = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab in data)
        print(
            f"{label}: batch {batch}, {scored / tokens:.0%} of the tokens scored, {args.steps} steps x "
            f"{args.rounds} rounds, {args.threads} thread(s); same losses on both paths"
        )
        print(f"  logits at every position   {best[False] * 1000:8.1f} ms/step CPU")
        print(f"  logits at scored positions {best[True] * 1000:8.1f} ms/step CPU")
        print(f"  speed-up: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
