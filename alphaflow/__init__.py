"""alpha-Flow library: model, objective, schedules, sampling, EMA, data and metrics.

This package never imports Ray, MLflow or `orchestrator`.
"""

__version__ = "0.1.0"
