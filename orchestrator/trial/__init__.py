"""One trial: the Ray Tune trainable that starts its Ray Train run, and the worker loop every rank runs."""
