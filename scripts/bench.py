"""Benchmarks: training steps, or each norm alone relative to BN (the same as `normlab bench`).

    python scripts/bench.py --quick
    python scripts/bench.py --models resnet20 --norms batch,group,group+proxy --json bench.json
    python scripts/bench.py --norm-ops --json norm_ops.json
"""

import sys

from normlab.bench.command import main

if __name__ == "__main__":
    sys.exit(main())
