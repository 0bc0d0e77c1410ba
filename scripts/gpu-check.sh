#!/usr/bin/env bash
# Checks mbsnet's GPU paths on a machine with one or more NVIDIA GPUs, in a few minutes:
# every ablation trains for 20 steps in fp32 and bf16, Mamba models with and without
# mamba_ssm's kernel; two trainings started at once must take two different GPUs; the
# scan implementations are compared with the reference on the device; the CUDA-only tests
# run. Prints a table and writes results/gpu-check/gpu-check.json.
#   bash scripts/gpu-check.sh [--steps 20] [--ablations bsrnn,abl2] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$PY" - <<'PYEOF'
import importlib.util, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} GPU(s) visible")
for name in ("mamba_ssm", "selective_scan_cuda"):
    print(f"{name}: {'importable' if importlib.util.find_spec(name) else 'not installed'}")
PYEOF
status=0
"$PY" scripts/gpu_check.py "$@" || status=$?
"$PY" -m pytest -q -ra -m "not slow" -k "cuda or gpu" tests/ || status=$?
exit $status
