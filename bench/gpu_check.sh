#!/usr/bin/env bash
# The CUDA path, checked on a machine with an NVIDIA GPU: train a run, evaluate its epochs, and
# time ck_dagster's materialization against a bare `tune run` of the very command its job runs.
#
#   bash bench/gpu_check.sh                      # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh # the same steps on CPU, to check the script
#
# No SLURM is needed: jobs run with the local launcher (CK_LAUNCHER=local). ck_dagster and its
# dependencies must import with the python it runs (PYTHON, default .venv/bin/python or
# python3); on a machine without a package index, put their wheels in .whl/ and they are
# installed into a scratch folder first. Prints a report and, last, one JSON line of figures;
# writes both to $OUT when it is set.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
EPOCHS="${GPU_CHECK_EPOCHS:-2}"
WORK="$(mktemp -d /tmp/ck-gpu-check.XXXXXX)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ -d "$REPO/.whl" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$REPO"/.whl/*.whl
    export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PATH="$WORK/site/bin:$PATH"
fi
export PATH="$(dirname "$PYTHON"):$PATH"

"$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
device = sys.argv[1]
if device == "cuda":
    assert torch.cuda.is_available(), "no CUDA device: run with GPU_CHECK_DEVICE=cpu to check the script"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
else:
    print(f"CPU only (GPU_CHECK_DEVICE={device}), torch {torch.__version__}")
EOF

ck() { "$PYTHON" -c 'import sys; from ck_dagster.cli import main; sys.exit(main())' "$@"; }
now() { date +%s.%N; }

cd "$WORK"
ck make-tiny-model models/tiny-llama --data data/capitalization.json >/dev/null
GPUS=$([ "$DEVICE" = cuda ] && echo 1 || echo 0)
cat > experiment_summary.yaml <<EOF
experiment: {name: gpu_check, directory: runs/gpu_check}
controls:
  base_recipe: llama3_2/1B_full_single_device
  optimizer._component_: torch.optim.AdamW
  epochs: $EPOCHS
  batch_size: 8
  seed: 0
  prompt: "Capitalize the given word: {input}\n"
compute: {gpus: $GPUS}
models: {base: [{name: tiny-llama, path: models/tiny-llama}]}
data: {training: {path: data/capitalization.json, format: json}}
runs: [{name: tuned, type: fine-tuned, model: tiny-llama, parameters: {lr: 2e-3}}]
evaluation:
  max_tokens: 12
  tasks: [{name: capitalization}]
EOF
export DAGSTER_HOME="$WORK/home" CK_LAUNCHER=local CK_LOCAL_JOBS_DIR="$WORK/jobs"
mkdir -p "$DAGSTER_HOME"
ck register experiment_summary.yaml
materialize() {
    "$PYTHON" -m dagster asset materialize -m ck_dagster.definitions --partition gpu_check/tuned \
        --select "$1" >"$WORK/$2.log" 2>&1 || { tail -n 40 "$WORK/$2.log"; exit 1; }
}
materialize recipe_config,run_config configs
t0=$(now); materialize checkpoint train; t1=$(now)
materialize eval_log eval; t2=$(now)

# The bare baseline: the job script's own `tune run` line, on the same config, into a fresh
# output folder (the run's own checkpoints are left alone).
RUN="$WORK/runs/gpu_check/tuned"
TUNE_LINE=$(grep '^tune run ' "$RUN/finetune.slurm" | sed 's/ "\$@"$//')
b0=$(now)
(cd "$RUN" && eval "$TUNE_LINE" output_dir="$WORK/bare" >"$WORK/bare.log" 2>&1) \
    || { tail -n 40 "$WORK/bare.log"; exit 1; }
b1=$(now)

# A model spread over two devices (evaluation.placement) answers as it does on one: on a GPU
# machine its layers go to the GPU and the CPU, so activations really cross devices.
"$PYTHON" - "$WORK" "$DEVICE" <<'EOF' >"$WORK/spread.json" || exit 1
import json, sys
from pathlib import Path
from ck_dagster.catalog.models import get_model
from ck_dagster.evaluation.provider import Decoding, generate, load_checkpoint, prompt_tokens
from ck_dagster.evaluation.spec import TorchtuneModel
from ck_dagster.finetune.dataset import prompt_messages
work, device = Path(sys.argv[1]), sys.argv[2]
epoch = sorted((work / "runs/gpu_check/tuned/artifacts").glob("epoch_*"))[-1]
model = TorchtuneModel.of(get_model("tiny-llama"), work / "models/tiny-llama", device=device)
devices = ("cuda:0", "cpu") if device == "cuda" else ("cpu", "cpu")
one, spread = load_checkpoint(model, epoch), load_checkpoint(model, epoch, devices)
words = json.loads((work / "data/capitalization.json").read_text())["test"][:32]
prompts = [
    prompt_tokens(one.tokenizer, prompt_messages(
        row["input"], prompt="Capitalize the given word: {input}\n", system_prompt=""))
    for row in words
]
same = sum(a == b for a, b in zip(generate(one, prompts, Decoding(12)),
                                  generate(spread, prompts, Decoding(12))))
print(json.dumps({"spread_over": "+".join(devices), "same_answers": same, "of": len(prompts),
                  "layer_devices": sorted({str(d) for d in spread.layer_devices})}))
EOF

"$PYTHON" - "$WORK" "$DEVICE" "$t0" "$t1" "$t2" "$b0" "$b1" <<'EOF' | tee "${OUT:-$WORK}/gpu_check.txt"
import json, sys
from pathlib import Path
work, device, t0, t1, t2, b0, b1 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
from dagster import AssetKey, DagsterInstance
with DagsterInstance.get() as instance:
    def meta(asset):
        event = instance.get_latest_materialization_event(AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}
    train, evaluation = meta("checkpoint"), meta("eval_log")
trained, bare, evaluated = t1 - t0, b1 - b0, t2 - t1
figures = {
    "bench": "gpu_check", "device": device,
    "materialize_checkpoint_s": round(trained, 1), "bare_tune_run_s": round(bare, 1),
    "wrapper_overhead_s": round(trained - bare, 1), "ratio": round(trained / bare, 2),
    "materialize_eval_log_s": round(evaluated, 1), "epochs_saved": train.get("epochs_saved"),
    "state": train.get("state"),
    "scores": {k: v for k, v in evaluation.items() if "accuracy" in k or "mean" in k},
    "spread": json.loads((Path(work) / "spread.json").read_text()),
}
print(f"train through ck_dagster {trained:.1f} s vs bare tune run {bare:.1f} s "
      f"(overhead {trained - bare:+.1f} s, {trained / bare:.2f}x); eval {evaluated:.1f} s")
spread = figures["spread"]
print(f"spread over {spread['spread_over']}: {spread['same_answers']}/{spread['of']} answers "
      "as on one device")
print(json.dumps(figures))
EOF
