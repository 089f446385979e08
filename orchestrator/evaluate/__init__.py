"""Scoring a trained generator after its sweep: `afsweep eval` (FID-N in a chosen feature space) and
`afsweep sample-sweep` (sampling-time knobs scored without retraining)."""
