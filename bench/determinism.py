"""Which inputs change a trial's numbers: one short trial (ERM on DigitsDemo, held-out mnist) run
again unchanged and under one change at a time; each run's records compared with the
reference's, key by key (accuracies and losses; timings excluded).

Variants: the same command again; `--threads 1` vs 2; fp32 vs bf16; torch's CPU kernels limited
to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, as on a CPU without AVX-512); another `--seed`.

    python bench/determinism.py [--steps 60] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = ("step_time", "eval_time", "wall_time", "cpu_time", "mem_gb")


def trial(out: Path, steps: int, threads: int, precision: str, seed: int = 0,
          env: dict[str, str] | None = None) -> list[dict]:
    argv = [sys.executable, "-m", "shiftbench", "train", "--dataset", "DigitsDemo", "--algorithm",
            "ERM", "--test-envs", "0", "--steps", str(steps), "--checkpoint-freq", str(steps // 2),
            "--threads", str(threads), "--precision", precision, "--seed", str(seed),
            "--hparams", '{"batch_size": 16, "cnn_width": 32}', "--skip-model-save",
            "--no-progress", "--output-dir", str(out)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def numbers(records: list[dict]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if isinstance(v, float) and k not in TIMING}
            for r in records]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="determinism_"))
    import torch

    base = dict(steps=args.steps, threads=2, precision="bf16")
    variants = {
        "same command again": {},
        "--threads 1 (reference: 2)": {"threads": 1},
        "--precision fp32 (reference: bf16)": {"precision": "fp32"},
        "ATEN_CPU_CAPABILITY=avx2 (reference: " + torch.backends.cpu.get_cpu_capability() + ")":
            {"env": {"ATEN_CPU_CAPABILITY": "avx2"}},
        "--seed 1 (reference: 0)": {"seed": 1},
    }
    reference = numbers(trial(tmp / "reference", **base))
    lines = [f"ERM on DigitsDemo, held-out mnist, {args.steps} steps, reference: bf16, 2 threads, "
             f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}",
             f"{'variant':50s} identical  differing values (of {sum(map(len, reference))}) / max |diff|"]
    for i, (name, change) in enumerate(variants.items()):
        got = numbers(trial(tmp / f"v{i}", **{**base, **change}))
        diffs = [abs(a[k] - b[k]) for a, b in zip(reference, got) for k in a if a[k] != b.get(k)]
        same = not diffs and len(got) == len(reference)
        lines.append(f"{name:50s} {'yes' if same else 'no':9s}  "
                     + ("" if same else f"{len(diffs)} / {max(diffs):.3g}"))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
