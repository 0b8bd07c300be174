"""normlab's TFDS builders: the original archives → TFDS array_record files, with no TensorFlow.

Builder names carry a `normlab_` prefix so they never clash with TFDS's own `mnist`, `cifar10`,
...; the user-facing names are the keys of `BUILDERS`, the catalog's built data sets
(`normlab.data.catalog`, which names each one's builder class). Image folders have their own
builder, one BuilderConfig per user-chosen name (`normlab.data.builders.image_folder`).

    from normlab.data.builders import BUILDERS
    builder = BUILDERS["mnist"](data_dir="/tmp/tfds", file_format="array_record")
"""

import tensorflow_datasets as tfds

from normlab.data.builders.base import NormlabBuilder
from normlab.data.builders.cifar import NormlabCifar10, NormlabCifar100
from normlab.data.builders.imagenet import NormlabImagenet2012
from normlab.data.builders.mnist import NormlabFashionMnist, NormlabMnist
from normlab.data.catalog import BUILT, CATALOG

# NormlabBuilder subclasses (fixed-shape arrays) and ImageBuilder ones (encoded images, streamed)
BUILDERS: dict[str, type[tfds.core.DatasetBuilder]] = {
    name: CATALOG[name].builder_cls() for name in BUILT
}

__all__ = [
    "BUILDERS",
    "NormlabBuilder",
    "NormlabCifar10",
    "NormlabCifar100",
    "NormlabFashionMnist",
    "NormlabImagenet2012",
    "NormlabMnist",
]
