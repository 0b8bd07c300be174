"""XLA:CPU settings normlab changes from JAX's defaults, applied when `normlab` is imported.

Convolutions on Eigen, not YNNPACK. jaxlib 0.10's XLA:CPU hands some convolutions to YNNPACK
(a `__ynn_fusion` in the compiled HLO): in ResNet-20 the 3×3 convs at 16²×32 and 8²×64 and the
strided ones. On the 2-core CPU they ran as fast pinned to one core as on two, while Eigen's
convolution, which XLA uses for the rest, runs on both (BENCHMARKS.md, "conv paths vs PyTorch
eager"): taking YNNPACK's convolutions out (`-individual_convolution`; its other fusions stay)
made those convs' forward+backward 1.4–1.6× faster and ResNet-20's train step 1.23× faster.
Both compute the same convolution; results differ in float32 rounding only.

The flag must be in XLA_FLAGS before JAX creates its CPU backend (the first computation), so
importing normlab after a JAX computation leaves XLA's defaults. Not applied when XLA_FLAGS
already sets `xla_cpu_experimental_ynn_fusion_type` (the user chose), when
NORMLAB_XLA_DEFAULTS=1, or on a jaxlib other than the measured 0.10.x: XLA rejects flags it does
not know, and a later YNNPACK may use both cores.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from importlib import metadata

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"--{YNN_FUSION_TYPE}=-individual_convolution"
MEASURED_JAXLIB = (0, 10)


def _jaxlib_minor() -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def prefer_eigen_convolutions(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Append EIGEN_CONVOLUTIONS to environ's XLA_FLAGS (module doc); True if it did."""
    flags = environ.get("XLA_FLAGS", "")
    if (YNN_FUSION_TYPE in flags or environ.get("NORMLAB_XLA_DEFAULTS") == "1"
            or _jaxlib_minor() != MEASURED_JAXLIB):
        return False
    environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True
