"""Errors of the metrics package; every message is one line that names the file or the value at fault."""


from alphaflow.errors import ExpectedError, InputError


class MetricsError(RuntimeError, ExpectedError):
    """A metrics input is unusable: missing or corrupt weights, bad images, mismatched reference statistics."""


class UnknownExtractorError(MetricsError, InputError):
    """A feature-extractor id that names no extractor."""


class WeightsMismatchError(MetricsError):
    """Feature-extractor weights whose sha256 differs from the recorded one."""


class IncompatibleReferenceError(MetricsError):
    """Reference statistics computed with another extractor, preprocessing or data set."""
