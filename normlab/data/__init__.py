"""Data: TFDS sources, loaders, augmentation and fitted input preprocessing."""
