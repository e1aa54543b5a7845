"""Benchmark: LoRA epochs stored and evaluated as adapters vs as merged weights.

The bench model is ``wide-llama``: the tiny model's tokenizer in a 16-layer, 768-wide Llama 3.2
body (~101M parameters, random weights, fp32), built locally and cached. Each epoch is a LoRA
adapter with ck_dagster's built-in defaults (rank 64, alpha 128, on q/v/output projections and
the MLP) with random weights, saved by torchtune's own ``FullModelHFCheckpointer`` exactly as
its LoRA recipe saves an epoch, side by side in one run:

- bytes on disk per saved epoch: ``save_adapter_weights_only: true`` vs merged weights (which
  torchtune writes together with the adapter files);
- eval wall time for N epochs x M LoRA runs through the real eval job
  (``python -m ck_dagster.evaluation.job``): today's path, one job per run loading every
  epoch's merged weights, vs one job per run loading the base once and applying each epoch's
  adapter (what ``eval_log`` submits now), vs one job for all runs on one base load.

Run: .venv/bin/python bench/bench_adapters.py [--epochs N] [--runs M]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchtune import training
from torchtune.modules.peft import (
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ck_dagster.catalog.models import get_model  # noqa: E402
from ck_dagster.evaluation.results import read_results  # noqa: E402
from ck_dagster.evaluation.spec import (  # noqa: E402
    EvalData,
    EvalSettings,
    EvalSpec,
    EvalTarget,
    TaskSpec,
    TorchtuneModel,
)
from ck_dagster.fileio import cache_dir, cached  # noqa: E402
from ck_dagster.finetune.plan import file_digest  # noqa: E402
from ck_dagster.slurm.script import OFFLINE_ENVIRONMENT  # noqa: E402
from ck_dagster.tiny import VERSION  # noqa: E402
from ck_dagster.tiny.model import WIDE_DIMS, lora_wide_llama, wide_llama, write_hf_model  # noqa: E402
from ck_dagster.tiny.tokenizer import write_tokenizer_files  # noqa: E402

#: ck_dagster's built-in LoRA defaults (finetune/builtin_defaults.yaml).
LORA = {
    "lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
    "apply_lora_to_mlp": True,
    "lora_rank": 64,
    "lora_alpha": 128,
}
WORDS = ["apple", "fig", "river", "stone", "cloud", "lemon", "tiger", "piano"]
PROMPT = "Capitalize the given word: {input}\n"
_READY = re.compile(r": .* ready on \S+ in ([\d.]+) s")


def make_wide_model(directory: Path) -> Path:
    """The random-weight wide-llama HF folder (tokenizer files included)."""
    directory.mkdir(parents=True)
    write_tokenizer_files(directory)
    torch.manual_seed(0)
    model = wide_llama()
    for parameter in model.parameters():  # Llama's init scale, not torchtune's N(0, 1) embedding
        torch.nn.init.normal_(parameter, std=0.02)
    write_hf_model(model, directory, WIDE_DIMS)
    return directory


def save_epoch(base: Path, output: Path, epoch: int, *, adapter_only: bool) -> Path:
    """One LoRA epoch (random adapter, seeded by ``epoch``) saved by torchtune's checkpointer as
    its LoRA recipe saves it: merged weights + adapter files, or the adapter files only."""
    checkpointer = training.FullModelHFCheckpointer(
        checkpoint_dir=str(base),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2",
        output_dir=str(output),
    )
    model = lora_wide_llama(**LORA)
    model.load_state_dict(checkpointer.load_checkpoint()[training.MODEL_KEY], strict=False)
    generator = torch.Generator().manual_seed(epoch)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    state = model.state_dict()
    saved: dict = {
        training.ADAPTER_KEY: get_adapter_state_dict(state),
        training.ADAPTER_CONFIG: {
            "r": LORA["lora_rank"],
            "lora_alpha": LORA["lora_alpha"],
            "target_modules": get_lora_module_names(LORA["lora_attn_modules"], True, False),
            "peft_type": "LORA",
        },
    }
    if not adapter_only:
        saved[training.MODEL_KEY] = get_merged_lora_ckpt(
            {key: value.clone() for key, value in state.items()},
            rank=LORA["lora_rank"],
            alpha=LORA["lora_alpha"],
        )
    checkpointer.save_checkpoint(saved, epoch=epoch, adapter_only=adapter_only)
    return output / f"epoch_{epoch}"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def eval_spec(
    work: Path, name: str, model: TorchtuneModel, data: Path, targets: list[EvalTarget]
) -> EvalSpec:
    spec = EvalSpec(
        partition_key=f"bench/{name}",
        run_dir=str(work / name),
        model=model,
        targets=tuple(targets),
        tasks=(TaskSpec(name="cap", prompt=PROMPT, system_prompt=""),),
        data=EvalData(path=str(data), sha256=file_digest(data), rows=len(WORDS)),
        settings=EvalSettings(max_tokens=4),
    )
    spec.write()
    return spec


def run_jobs(groups: list[list[EvalSpec]]) -> tuple[float, float, int]:
    """Run one eval job per group of specs, one after another: (wall s, s spent making models
    ready as the jobs report it, number of models made ready)."""
    started, ready = time.perf_counter(), []
    for group in groups:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ck_dagster.evaluation.job",
                *(str(spec.spec_path) for spec in group),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **OFFLINE_ENVIRONMENT},
        )
        if done.returncode != 0:
            raise SystemExit(f"eval job failed:\n{done.stdout}\n{done.stderr}")
        ready += [float(m) for m in _READY.findall(done.stdout)]
    return time.perf_counter() - started, sum(ready), len(ready)


def accuracies(specs: list[EvalSpec]) -> list[float | None]:
    out = []
    for spec in specs:
        results = read_results(Path(spec.run_dir))
        assert results is not None
        out += [o.accuracy for o in results.evaluations]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    base = cached(cache_dir() / f"bench-wide-llama-{VERSION}", make_wide_model)
    params = sum(p.numel() for p in wide_llama().parameters())
    model = TorchtuneModel.of(get_model("tiny-llama"), base).model_copy(
        update={"builder": "ck_dagster.tiny.model.wide_llama"}
    )
    with tempfile.TemporaryDirectory(prefix="bench_adapters_") as tmp:
        work = Path(tmp)
        data = work / "words.json"
        data.write_text(
            json.dumps({"test": [{"input": w, "output": w.capitalize()} for w in WORDS]})
        )
        adapter_only = save_epoch(base, work / "adapter_only", 0, adapter_only=True)
        merged_runs = [
            [
                save_epoch(base, work / f"run{m}", m * 100 + n, adapter_only=False)
                for n in range(args.epochs)
            ]
            for m in range(args.runs)
        ]
        adapter_bytes, merged_bytes = folder_bytes(adapter_only), folder_bytes(merged_runs[0][0])

        def targets(folders: list[Path], adapters: bool) -> list[EvalTarget]:
            return [
                EvalTarget(
                    label=f"epoch_{n}",
                    path=str(base if adapters else folder),
                    adapter=str(folder) if adapters else None,
                    tasks=("cap",),
                )
                for n, folder in enumerate(folders)
            ]

        merged = [
            eval_spec(work, f"merged{m}", model, data, targets(folders, False))
            for m, folders in enumerate(merged_runs)
        ]
        adapters = [
            eval_spec(work, f"adapters{m}", model, data, targets(folders, True))
            for m, folders in enumerate(merged_runs)
        ]
        shared = [
            eval_spec(work, f"shared{m}", model, data, targets(folders, True))
            for m, folders in enumerate(merged_runs)
        ]
        baseline = run_jobs([[spec] for spec in merged])
        per_run = run_jobs([[spec] for spec in adapters])
        one_job = run_jobs([shared])
        same = accuracies(merged) == accuracies(adapters) == accuracies(shared)

    print(
        f"\nwide-llama: {params / 1e6:.1f}M parameters, fp32; LoRA rank {LORA['lora_rank']} on "
        "q/v/output projections and the MLP"
    )
    print(
        f"bytes per saved epoch: adapter only {adapter_bytes / 2**20:.1f} MiB, merged (with "
        f"its adapter files) {merged_bytes / 2**20:.1f} MiB: {merged_bytes / adapter_bytes:.1f}x"
        " smaller"
    )
    n = args.epochs * args.runs
    print(
        f"\nevaluating {args.epochs} epochs x {args.runs} LoRA runs ({n} targets, "
        f"{len(WORDS)} samples each):"
    )
    print(f"{'':48} {'wall s':>7} {'ready s':>8} {'loads':>6}")
    for label, (wall, ready, count) in (
        ("merged weights, one job per run (before)", baseline),
        ("base + adapters, one job per run (eval_log now)", per_run),
        ("base + adapters, one job for all runs", one_job),
    ):
        loads = count if label.startswith("merged") else (args.runs if "per run" in label else 1)
        print(f"{label:48} {wall:7.1f} {ready:8.1f} {loads:6d}")
    print(f"identical accuracies on all three paths: {same}")
    print(
        json.dumps(
            {
                "bench": "adapters",
                "params_m": round(params / 1e6, 1),
                "adapter_epoch_mib": round(adapter_bytes / 2**20, 2),
                "merged_epoch_mib": round(merged_bytes / 2**20, 2),
                "epochs": args.epochs,
                "runs": args.runs,
                "baseline_wall_s": round(baseline[0], 1),
                "per_run_wall_s": round(per_run[0], 1),
                "one_job_wall_s": round(one_job[0], 1),
                "baseline_ready_s": round(baseline[1], 1),
                "one_job_ready_s": round(one_job[1], 1),
                "identical": same,
            }
        )
    )


if __name__ == "__main__":
    main()
