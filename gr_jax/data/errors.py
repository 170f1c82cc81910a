"""Errors raised for bad input data."""


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file/field and the fix."""
