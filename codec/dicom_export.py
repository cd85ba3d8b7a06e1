"""Export: write a restored DICOM file in a standard lossless transfer syntax.

For systems that cannot read ``.nvc``: the same pixel values, the header re-encoded by pydicom
(Explicit VR Little Endian, as every encapsulated syntax requires), and the Pixel Data

* ``jpegls``: JPEG-LS Lossless (1.2.840.10008.1.2.4.80), one frame per fragment (CharLS via imagecodecs);
* ``jpeg2000``: JPEG 2000 Lossless Only (1.2.840.10008.1.2.4.90), reversible 5/3, no colour transform (OpenJPEG);
* ``htj2k``: High-Throughput JPEG 2000 Lossless (1.2.840.10008.1.2.4.201) (OpenJPH);
* ``explicit-little``: Explicit VR Little Endian (1.2.840.10008.1.2.1), the original words.

Encoders come from imagecodecs; pydicom reads the result back with the pylibjpeg plugins
(pylibjpeg-libjpeg for JPEG-LS, pylibjpeg-openjpeg for both JPEG 2000 flavours). Signed values
are encoded as their BitsStored-bit two's-complement pattern for JPEG-LS (which has no signed
mode; DICOM PS3.5 8.2.3) and as signed samples for JPEG 2000. A file a syntax cannot hold
(32-bit words in JPEG-LS, 1-bit data in any encapsulated syntax, for instance) raises :class:`UnsupportedInputError`; the caller then
keeps the original file.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from codec.dicom_pixels import Analysed, analyse, pixel_bytes, quiet_pydicom
from codec.errors import UnsupportedInputError

TRANSFER_SYNTAXES = {
    "jpegls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "htj2k": "1.2.840.10008.1.2.4.201",
    "explicit-little": "1.2.840.10008.1.2.1",
}


def _frames(a: Analysed) -> list[np.ndarray]:
    """One (rows, columns[, samples]) array of values per frame."""
    p = a.layout
    planes = a.values.reshape(p.frames, p.samples, p.rows, p.columns)
    if p.samples == 1:
        return [planes[f, 0] for f in range(p.frames)]
    return [np.ascontiguousarray(planes[f].transpose(1, 2, 0)) for f in range(p.frames)]


def _encode_frame(frame: np.ndarray, syntax: str, a: Analysed) -> bytes:
    import imagecodecs

    p = a.layout
    if p.bits_allocated == 1:  # encapsulated syntaxes need BitsAllocated 8 or 16 (PS3.5 8.2)
        raise UnsupportedInputError(f"{syntax} cannot hold 1-bit pixel data")
    if p.bits_allocated > 16:
        raise UnsupportedInputError(f"{syntax} holds at most 16 bits per sample; this file has {p.bits_allocated}")
    if syntax == "jpegls":
        unsigned = np.dtype(f"u{p.bits_allocated // 8}")
        bits = frame.view(unsigned) & unsigned.type((1 << p.bits_stored) - 1) if p.signed else frame
        return bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(bits), level=0))
    if syntax == "jpeg2000":
        return bytes(imagecodecs.jpeg2k_encode(np.ascontiguousarray(frame), level=0, codecformat="j2k", reversible=True,
                                               mct=False, bitspersample=p.bits_stored))
    if syntax == "htj2k":
        return bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(frame), reversible=True))
    raise UnsupportedInputError(f"unknown transfer syntax {syntax!r}")


def export_file(content: bytes, syntax: str) -> bytes:
    """`content` (a DICOM file with native pixel data) rewritten in transfer syntax `syntax`."""
    if syntax not in TRANSFER_SYNTAXES:
        raise UnsupportedInputError(f"unknown transfer syntax {syntax!r}: choose one of {', '.join(TRANSFER_SYNTAXES)}")
    a = analyse(content)
    if not isinstance(a, Analysed):
        raise UnsupportedInputError(f"cannot export: {a.reason}")
    p = a.layout
    import pydicom
    from pydicom.encaps import encapsulate

    with quiet_pydicom():
        ds = pydicom.dcmread(io.BytesIO(content), force=True)
        if ds.get("PhotometricInterpretation", "") == "YBR_FULL_422":
            raise UnsupportedInputError("cannot export 4:2:2 subsampled colour")
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        if syntax == "explicit-little":
            from dataclasses import replace

            little = replace(p, big_endian=False)
            ds.PixelData = pixel_bytes(a.values, _little_residual(a), little)
            ds["PixelData"].VR = "OW" if p.bits_allocated > 8 else "OB"
        else:
            ds.PixelData = encapsulate([_encode_frame(f, syntax, a) for f in _frames(a)])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            if p.samples > 1:
                ds.PlanarConfiguration = 0
        ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[syntax]
        if "MediaStorageSOPClassUID" not in ds.file_meta and "SOPClassUID" in ds:
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "MediaStorageSOPInstanceUID" not in ds.file_meta and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        # dcmwrite (unlike Dataset.save_as) converts a big-endian data set's values to little endian
        pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _little_residual(a: Analysed) -> bytes:
    """The residual bits in little-endian word order (they were kept in the file's order)."""
    if not a.residual or not a.layout.big_endian:
        return a.residual
    return np.frombuffer(a.residual, dtype=a.layout.word_dtype).astype(a.layout.word_dtype.newbyteorder("<")).tobytes()


def exporter_for(syntax: str) -> Callable[[bytes], bytes]:
    """A function that exports one file to `syntax` (checked now, so a typo fails before any work)."""
    if syntax not in TRANSFER_SYNTAXES:
        raise UnsupportedInputError(f"unknown transfer syntax {syntax!r}: choose one of {', '.join(TRANSFER_SYNTAXES)}")
    return lambda content: export_file(content, syntax)
