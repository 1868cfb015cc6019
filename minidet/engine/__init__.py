"""minidet.engine: the training loop (``trainer``) and its parts: checkpoints, optimiser, LR
schedule, EMA, run logs, progress display, DDP helpers and thread / worker counts."""
