#!/usr/bin/env bash
# The one script a session with a lent GPU (H100/H200) runs, ≤ 8 minutes in all:
#   1. `normlab bench --suite gpu`: norms vs BN and flax, ResNet-20/50 bf16 steps with MFU and
#      compile times, the host input, the parallel layouts (≤ 6 min; normlab/bench/suite.py);
#   2. `normlab bench --input`: JPEG decode + augment by 1/4/16 threads, the stream, and what
#      feeding a ResNet-50 step costs (normlab/bench/input.py, feeds.py).
# Results go to $OUT (default results/gpu): suite.json + suite.md, input.json, the logs and
# nvidia-smi's view; paste suite.md into BENCHMARKS.md with the device named.
#
#   OUT=/tmp/gpu scripts/gpu_session.sh            # PY=python3 by default
#
# Packages the machine's image lacks (ml-collections, simplejpeg, grain, array_record,
# submitit, ...) travel as wheels in .whl/ (see the device notes); they are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
# fail in seconds, not minutes, when something is missing
"$PY" -c "import jax, normlab.bench.suite; print(jax.devices())" 2>&1 | tee "$OUT/preflight.log"
timeout 420 "$PY" -m normlab bench --suite gpu --json "$OUT/suite.json" 2>&1 | tee "$OUT/suite.log"
timeout 100 "$PY" -m normlab bench --input --input-threads 1,4,16 --repeats 3 \
  --json "$OUT/input.json" 2>&1 | tee "$OUT/input.log"
