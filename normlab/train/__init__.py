"""Training system: state, step, loop, checkpoints, metrics, diagnostics."""
