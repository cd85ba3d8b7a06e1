"""Errors raised by the codec. Every failure a caller can cause is one of these, with a
message that says what is wrong (never a bare IndexError, MemoryError or struct.error)."""


class CodecError(ValueError):
    """Base class for every error the codec reports."""


class UnsupportedInputError(CodecError):
    """The input volume cannot be coded (dtype, shape, value range, file type)."""


class FormatError(CodecError):
    """The .nvc data is truncated, corrupted, hostile or of an unknown version."""


class IntegrityError(FormatError):
    """A checksum (CRC-32C of a chunk or SHA-256 of the voxels) does not match."""
