"""One trial: its typed config, the Ray Tune trainable that starts its Ray Train run, the worker loop."""
