"""Training: the trainer loop (updates, validation, early stopping, interruption) and
self-contained, atomically written checkpoints."""
