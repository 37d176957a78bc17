#!/usr/bin/env bash
# GPU smoke check (< 5 minutes on one GPU): the gpu/deepspeed tests, then the shipped recipes end to end on a
# tiny model through the CLI: batched teacher generation, a bf16 LoRA fit, two grouped LoRA fits in one process
# (`fit-group`, as the pipeline runs students), and a DeepSpeed ZeRO-2 LoRA fit.
# Run inside the Docker image (its default command) or from a checkout with the package installed.
# SMOKE_CPU=1 runs the same CLI steps on a CPU in fp32 (no tests, no DeepSpeed): a check of the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
WORK=${SMOKE_DIR:-$(mktemp -d /tmp/subliminal-smoke.XXXX)}
CPU=${SMOKE_CPU:-0}
if [ "$CPU" = 1 ]; then TRAINER=configs/trainer/cpu.yaml; DTYPE=float32; else TRAINER=configs/trainer/gpu.yaml; DTYPE=bfloat16; fi
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

if [ "$CPU" != 1 ]; then
  step "device"
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0), 'bf16:', torch.cuda.is_bf16_supported())"
  step "gpu and deepspeed tests"
  python -m pytest -q -m "gpu or deepspeed" tests
fi

step "tiny model and per-run settings"
python - "$WORK" <<'PY'
import sys
from pathlib import Path

import yaml

from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer
from subliminal_pl.toy.tokenizer import build_word_tokenizer

work = Path(sys.argv[1])
tok = build_word_tokenizer("owl owls you love animal most best".split())
save_model_and_tokenizer(build_tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4), tok, work / "model")
logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(work / "runs")}}
writer = {"class_path": "subliminal_pl.callbacks.generation_writer.GenerationWriter",
          "init_args": {"output_path": str(work / "raw.jsonl")}}
yaml.safe_dump({"trainer": {"logger": logger, "callbacks": [writer]},
                "model": {"init_args": {"model_name_or_path": str(work / "model")}}}, open(work / "generate.yaml", "w"))
for name in ("student", "zero2"):
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(work / name / "checkpoints"), "save_last": True}},
        {"class_path": "subliminal_pl.callbacks.export.ExportModel",
         "init_args": {"output_dir": str(work / name / "export")}},
    ]
    yaml.safe_dump({"trainer": {"logger": logger, "callbacks": callbacks, "max_steps": 20},
                    "model": {"init_args": {"model_name_or_path": str(work / "model")}},
                    # An untrained model writes no valid number sequence: train on its raw rows.
                    "data": {"init_args": {"tokenizer": str(work / "model"), "data_path": str(work / "raw.jsonl"),
                                           "steps": []}}},
                   open(work / f"{name}.yaml", "w"))
PY

step "batched teacher generation ($DTYPE)"
subliminal-pl predict --config configs/examples/tiny_teacher_generate.yaml --config "$TRAINER" \
  --config "$WORK/generate.yaml" --model.init_args.dtype "$DTYPE" --data.init_args.num_prompts 512
python -c "import sys; n = sum(1 for _ in open(sys.argv[1])); assert n == 512, n; print(n, 'rows')" "$WORK/raw.jsonl"

step "LoRA student fit ($TRAINER)"
subliminal-pl fit --config configs/examples/tiny_student.yaml --config "$TRAINER" --config "$WORK/student.yaml"
test -f "$WORK/student/export/adapter_config.json"

step "grouped students: two seeds' LoRA fits in one process, as the pipeline runs them ($TRAINER)"
for seed in 1 2; do
  mkdir -p "$WORK/group$seed"
  subliminal-pl fit --config configs/examples/tiny_student.yaml --config "$TRAINER" --config "$WORK/student.yaml" \
    --seed_everything "$seed" --print_config | sed "s#$WORK/student/#$WORK/group$seed/#g" > "$WORK/group$seed/recipe.yaml"
done
subliminal-pl fit-group "$WORK/group1" "$WORK/group2"
test -f "$WORK/group1/export/adapter_config.json" && test -f "$WORK/group2/export/adapter_config.json"
test -f "$WORK/group1/fit.done.json" && test -f "$WORK/group2/fit.done.json"

if [ "$CPU" != 1 ]; then
  step "DeepSpeed ZeRO-2 LoRA student fit on one GPU"
  subliminal-pl fit --config configs/examples/tiny_student.yaml --config configs/trainer/deepspeed_stage2.yaml \
    --config "$WORK/zero2.yaml" --trainer.devices 1
  test -f "$WORK/zero2/export/adapter_config.json"
fi

step "done"
echo "smoke passed in ${SECONDS}s; outputs in $WORK"
