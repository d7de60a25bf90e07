"""tailored.data: schema, datasets (MovieLens-100k, synthetic, import), splits, features.

The bottom layer above the floor: it imports only ``tailored.config``, ``tailored.errors``
and ``tailored.paths``, and numpy, pyarrow and scipy; no torch.
"""
