"""Errors raised by the codec. Every failure a caller can cause is one of these, with a
message that says what is wrong (never a bare IndexError, MemoryError or struct.error).

A service maps them to HTTP answers by class alone: :class:`UnrecognisedInputError` 415,
:class:`TooLargeError` 413, every other :class:`CodecError` 422."""


class CodecError(ValueError):
    """Base class for every error the codec reports."""


class UnsupportedInputError(CodecError):
    """The input volume cannot be coded (dtype, shape, value range, file type)."""


class UnrecognisedInputError(UnsupportedInputError):
    """The data is not in any format this operation reads (its magic bytes say so)."""


class FormatError(CodecError):
    """The .nvc data is truncated, corrupted, hostile or of an unknown version."""


class IntegrityError(FormatError):
    """A checksum (CRC-32C of a chunk or SHA-256 of the voxels) does not match."""


class TooLargeError(FormatError, UnsupportedInputError):
    """The data declares more than the codec is configured to decode or hold (a decoded size, a
    header, or decoding working memory above its limit): refused before anything that size is
    allocated. Before decoding, a forged header and an honestly huge volume look alike, so it is
    both a FormatError (for .nvc data) and an UnsupportedInputError (for a volume file); the
    message names the limit to raise for a genuine file."""
