#!/usr/bin/env bash
# The GPU checks, in under 10 minutes on one GPU: the CUDA tests (tests/test_cuda.py, which
# include a short search + fine-tune through the command line with --device cuda), then the
# gpu_throughput benchmark (CPU vs CUDA fp32/bf16/fp16 training, scoring and latency).
#
#   bash bench/gpu_check.sh [RESULTS_DIR]      # default bench/results
#
# Needs the project installed (README) in an environment whose torch sees the GPU. Where the
# packages cannot be installed from an index, put their wheels in .whl/ (see bench/README.md):
# they are installed into a private folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # a checkout, installed or not
RESULTS="${1:-bench/results}"
mkdir -p "$RESULTS"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/prunetune-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/prunetune-site${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="/tmp/prunetune-site/bin:$PATH"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
"$PY" -m pytest -q -m needs_cuda tests/test_cuda.py -p no:cacheprovider --durations=10 \
    2>&1 | tee "$RESULTS/gpu_tests.log" || status=1
"$PY" bench/run.py gpu_throughput --out "$RESULTS" || status=1
exit $status
