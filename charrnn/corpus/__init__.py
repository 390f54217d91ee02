"""Text to ids: which files, decoded and checked, the vocabulary (characters or bytes), the
split, and the batches."""
