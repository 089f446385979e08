"""The base of every spec model: an unknown key is an error, not a silently ignored typo."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldError(ValueError):
    """A model validator's error about one of the model's fields: the spec's error line names `section.key`."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message
