"""The one exception every dataset loader raises for a file that breaks its documented format."""


class DataFormatError(ValueError):
    """A data file does not have its documented layout; the message names the file, line and column."""
