"""Data: synthetic phantoms, exploration, the prepared cache, splits, datasets and loaders."""
