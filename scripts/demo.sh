#!/usr/bin/env bash
# The main example: the BatchNorm paper's MNIST net (3 × 100 sigmoid, batch 60, SGD, 50,000
# steps) with BatchNorm, then its test accuracy. MNIST comes from $NORMLAB_DATA_DIR (a folder
# with an `mnist/` sub-folder of the original archives; ../shared/datasets when it exists), or
# is downloaded; where neither works the demo falls back to scikit-learn's bundled digits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ -z "${NORMLAB_DATA_DIR:-}" ] && [ -d ../shared/datasets ]; then
  NORMLAB_DATA_DIR=$(cd ../shared/datasets && pwd)
  export NORMLAB_DATA_DIR
fi
if "$PY" -m normlab data prepare mnist; then
  dataset=mnist
else
  echo "MNIST is not available here: running the demo on scikit-learn's digits instead." >&2
  dataset=digits
fi
"$PY" -m normlab train --config "configs/mnist_mlp.py:norm=batch,dataset=$dataset" \
  --workdir "runs/demo_${dataset}_bn"
"$PY" -m normlab eval --workdir "runs/demo_${dataset}_bn"
