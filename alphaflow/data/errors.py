"""The one error type of the data path. Its message is a single line that names the file, shard or URL."""


class DataError(RuntimeError):
    """Bad or unreachable data: a missing manifest, a corrupt shard, wrong credentials, an empty source."""
