"""minidet.engine: checkpoints (and, with the training issue, the trainer and friends)."""
