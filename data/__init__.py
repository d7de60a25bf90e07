"""tailored.data: schema, datasets (MovieLens-100k, synthetic, import), splits."""
