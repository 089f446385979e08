"""The one retry policy for calls that cross a network (S3, the MLflow server): exponential backoff while the
failure is transient, for at least `min_attempts` tries and `patience_s` seconds; any other failure at once.

A restarted server (tens of seconds) should cost a pause, not a trial. The client libraries' own retries
(botocore's, MLflow's) cover a blip of about a second; this covers the outage."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_transient(fn: Callable[[], T], *, is_transient: Callable[[Exception], bool], patience_s: float,
                    first_delay_s: float, min_attempts: int = 0, max_delay_s: float = 10.0, jitter: bool = False,
                    on_first_retry: Callable[[Exception], None] | None = None) -> T:
    """fn(), retried while it fails transiently; the last failure is raised as it is."""
    delay, attempt, start = first_delay_s, 0, time.monotonic()
    while True:
        try:
            return fn()
        except Exception as e:
            out_of_time = attempt >= min_attempts and time.monotonic() - start >= patience_s
            if out_of_time or not is_transient(e):
                raise
            if attempt == 0 and on_first_retry is not None:
                on_first_retry(e)
            time.sleep(delay * (1 + random.random()) if jitter else delay)
            delay, attempt = min(delay * 2, max_delay_s), attempt + 1
