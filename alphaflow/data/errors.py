"""The one error type of the data path. Its message is a single line that names the file, shard or URL."""


from alphaflow.errors import ExpectedError, InputError


class DataError(RuntimeError, ExpectedError):
    """Bad or unreachable data: a missing manifest, a corrupt shard, wrong credentials, an empty source."""


class DataInputError(DataError, InputError):
    """A data argument that cannot be used as given (a source that does not exist, a bad option)."""
