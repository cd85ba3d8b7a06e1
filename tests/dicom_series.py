"""Build realistic DICOM series in temporary folders for the tests (never stored in the repo).

`write_series` turns an (x, y, z) integer volume - usually a crop of a real CT/MR volume from
../shared/data - into one file per slice with the header a scanner writes: patient and study
modules, geometry (position along the slice normal, optional gantry tilt), acquisition fields,
window and rescale values and private tags, in Implicit VR LE, Explicit VR LE or Explicit VR BE,
with BitsStored below BitsAllocated and junk high bits, odd lengths and trailing bytes on demand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SYNTAXES = {
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "big": "1.2.840.10008.1.2.2",
}
PATIENT_NAME = "TESTPATIENT^SECRET^NAME"


def real_crop(name: str, shape=(96, 80, 6)) -> np.ndarray:
    """The centred crop of a real volume (NIfTI order), as stored (no scaling)."""
    import nibabel as nib

    from conftest import DATA_DIR

    import pytest

    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    img = nib.load(str(path))
    full = np.asanyarray(img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else img.dataobj)
    starts = [max(0, (n - s) // 2) for n, s in zip(full.shape, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(starts, shape))
    return np.ascontiguousarray(full[sl])


def _uid(root: str, *parts: int) -> str:
    return root + "." + ".".join(str(p) for p in parts)


def write_series(
    out: Path,
    volume: np.ndarray,
    *,
    modality: str = "CT",
    series_number: int = 1,
    syntax: str = "explicit",
    description: str = "HEAD 5mm",
    spacing=(0.5, 0.5, 5.0),
    tilt_deg: float = 0.0,
    missing: tuple[int, ...] = (),
    bits_stored: int | None = None,
    junk_high_bits: bool = False,
    trailing: bytes = b"",
    trailing_padding: bool = False,
    private: bool = True,
    prefix: str = "IM",
    shuffle_names: bool = True,
    patient_name: str = PATIENT_NAME,
    study_root: str = "1.2.826.0.1.3680043.8.498.1",
) -> list[Path]:
    """Write `volume` (x, y, z) as a DICOM series under `out`, one file per slice; returns the paths.

    Slice k has ImagePositionPatient k * spacing[2] along the slice normal (tilted by `tilt_deg`
    about the x axis); `missing` slices are left out. File names are shuffled relative to the
    slice order (unless `shuffle_names`), so ordering must come from the headers.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    out.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(volume)
    nx, ny, nz = vol.shape
    itemsize = vol.dtype.itemsize
    bits_allocated = 8 * itemsize
    bits_stored = bits_stored or bits_allocated
    signed = vol.dtype.kind == "i"
    series_uid = _uid(study_root, 2, series_number)
    tilt = math.radians(tilt_deg)
    row_dir = (1.0, 0.0, 0.0)
    col_dir = (0.0, math.cos(tilt), -math.sin(tilt))
    normal = np.cross(row_dir, col_dir)
    order = [k for k in range(nz) if k not in missing]
    names = list(range(len(order)))
    if shuffle_names:
        names = list(np.random.default_rng(series_number).permutation(len(order)))
    rng = np.random.default_rng(1000 + series_number)
    paths = []
    for pos, k in enumerate(order):
        meta = FileMetaDataset()
        sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
        sop_uid = _uid(study_root, 3, series_number, k + 1)
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = SYNTAXES[syntax]
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "NVC_TEST"
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20240311"
        ds.SeriesDate = "20240311"
        ds.AcquisitionDate = "20240311"
        ds.ContentDate = "20240311"
        ds.StudyTime = "101500"
        ds.ContentTime = f"1016{pos % 60:02d}"
        ds.AccessionNumber = "ACC0042"
        ds.Modality = modality
        ds.Manufacturer = "NVC Test Scanners"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = "REFERRER^DOCTOR"
        ds.StationName = "CT01" if modality == "CT" else "MR01"
        ds.StudyDescription = "Research study"
        ds.SeriesDescription = description
        ds.ManufacturerModelName = "Model 9"
        ds.PatientName = patient_name
        ds.PatientID = "PID-20240311-7"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.PatientAge = "054Y"
        ds.BodyPartExamined = "HEAD"
        ds.SliceThickness = f"{spacing[2]:g}"
        if modality == "CT":
            ds.KVP = "120"
            ds.DataCollectionDiameter = "500"
            ds.ReconstructionDiameter = "250"
            ds.GantryDetectorTilt = f"{tilt_deg:g}"
            ds.TableHeight = "150"
            ds.ExposureTime = "1000"
            ds.XRayTubeCurrent = "250"
            ds.ConvolutionKernel = "H30s"
        else:
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.RepetitionTime = "2300"
            ds.EchoTime = "2.98"
            ds.MagneticFieldStrength = "3"
            ds.FlipAngle = "9"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = _uid(study_root, 1)
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "42"
        ds.SeriesNumber = str(series_number)
        ds.AcquisitionNumber = "1"
        ds.InstanceNumber = str(k + 1)
        position = np.array([-0.5 * nx * spacing[0], -0.5 * ny * spacing[1], 0.0]) + normal * k * spacing[2]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = _uid(study_root, 4)
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{k * spacing[2]:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        if modality == "CT":
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
        if private:
            ds.add_new(0x00190010, "LO", "NVC TEST PRIVATE")
            ds.add_new(0x00191010, "LO", f"slab-{k}")
            ds.add_new(0x00191011, "DS", f"{rng.random():.6f}")
            ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
            ds.add_new(0x00291010, "OB", bytes(rng.integers(0, 256, size=64 + 2 * (k % 3), dtype=np.uint8)))
            item = Dataset()
            item.add_new(0x00191012, "LO", "nested")
            ds.add_new(0x00191013, "SQ", Sequence([item]))
        frame = vol[:, :, k].T  # rows = y, columns = x
        words = frame.astype(vol.dtype.newbyteorder("<") if itemsize > 1 else vol.dtype)
        if junk_high_bits and bits_stored < bits_allocated:
            unsigned = np.dtype(f"u{itemsize}")
            field = words.view(unsigned) & unsigned.type((1 << bits_stored) - 1)
            junk = rng.integers(0, 1 << (bits_allocated - bits_stored), size=frame.shape).astype(unsigned)
            words = (field | (junk << unsigned.type(bits_stored))).astype(unsigned)
        if syntax == "big" and itemsize > 1:
            words = words.astype(words.dtype.newbyteorder(">"))
        ds.PixelData = np.ascontiguousarray(words).tobytes()
        ds["PixelData"].VR = "OW" if itemsize > 1 else "OB"
        if trailing_padding:  # Data Set Trailing Padding, an element after Pixel Data
            ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)
        path = out / f"{prefix}{names[pos]:04d}.dcm"
        ds.save_as(path, implicit_vr=(syntax == "implicit"), little_endian=(syntax != "big"), enforce_file_format=True)
        if trailing:  # bytes after the data set
            with open(path, "ab") as f:
                f.write(trailing)
        paths.append(path)
    return paths


def write_structured_report(path: Path, series_number: int = 9, patient_name: str = PATIENT_NAME) -> Path:
    """A small non-image object (Basic Text SR) in the same study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.5.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientName = patient_name
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.1.2.{series_number}"
    ds.SeriesDescription = "report"
    ds.ValueType = "CONTAINER"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def write_bitmask(
    path: Path,
    mask: np.ndarray,
    *,
    syntax: str = "explicit",
    padding_bits: int = 0,
    pad_byte: bytes | None = None,
    trailing: bytes = b"",
    series_number: int = 20,
    patient_name: str = PATIENT_NAME,
    study_root: str = "1.2.826.0.1.3680043.8.498.1",
) -> Path:
    """A 1-bit (BitsAllocated 1) multi-frame object, as a segmentation is stored: `mask` is
    (frames, rows, columns) of 0/1, packed as one bit stream over all frames (pixel i is bit
    i % 8 of byte i // 8, least significant first), so frames need not start on a byte.

    `padding_bits` is OR-ed into the bits after the last pixel of the last byte (a writer that
    leaves junk there); `pad_byte`, when given, is appended to the pixel bytes inside the Pixel
    Data value (an odd packed length padded to even with that byte rather than zero)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    mask = np.asarray(mask, dtype=np.uint8)
    frames, rows, columns = mask.shape
    packed = bytearray(np.packbits(mask.reshape(-1), bitorder="little").tobytes())
    used = mask.size % 8
    if padding_bits:
        assert used, "no padding bits: the pixel count is a multiple of 8"
        packed[-1] |= padding_bits & (0xFF << used) & 0xFF
    if pad_byte is not None:
        packed += pad_byte
    meta = FileMetaDataset()
    sop_uid = _uid(study_root, 3, series_number, 1)
    meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = SYNTAXES[syntax]
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = SEGMENTATION_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SEG"
    ds.PatientName = patient_name
    ds.StudyInstanceUID = _uid(study_root, 1)
    ds.SeriesInstanceUID = _uid(study_root, 2, series_number)
    ds.SeriesDescription = "mask"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = str(frames)
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.SegmentationType = "BINARY"
    ds.PixelData = bytes(packed)
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=(syntax == "implicit"), little_endian=(syntax != "big"), enforce_file_format=True)
    if trailing:
        with open(path, "ab") as f:
            f.write(trailing)
    return path


def pydicom_corpus(max_bytes: int | None = None) -> dict[str, bytes]:
    """The DICOM test corpus: every regular file pydicom ships with its tests and, when the
    pydicom-data package is installed, every file of that too (real headers, odd encodings,
    compressed syntaxes, 1-bit segmentations, broken files, and a few non-DICOM files among
    them), named relative to the folder they share; `max_bytes` leaves out larger files."""
    import os

    from pydicom.data import get_testdata_files

    paths = sorted(p for p in get_testdata_files() if os.path.isfile(p)
                   and (max_bytes is None or os.path.getsize(p) <= max_bytes))
    base = os.path.commonpath(paths)
    return {os.path.relpath(p, base).replace(os.sep, "/"): Path(p).read_bytes() for p in paths}


#: Why a file may be stored verbatim although it is DICOM: none of these is native pixel data a
#: coder could have taken (anything else - "BitsAllocated ...", "pixel data does not re-serialise
#: exactly" - would be a gap).
NOT_CODABLE = (
    "not an image", "compressed transfer syntax", "not a DICOM file", "deflated transfer syntax",
    "truncated pixel data", "pixel data not mappable", "Pixel Data holds", "not readable as DICOM",
)
#: Corpus files that are broken or not images in a way no coder could map (the reason each
#: must be stored with); anything else native in the corpus must be coded.
CORPUS_VERBATIM_REASONS = {
    "MR_truncated.dcm": "truncated pixel data",
    "badVR.dcm": "pixel data not mappable: NumberOfFrames is not an integer",
    "meta_missing_tsyntax.dcm": "pixel data not mappable: no Columns",
    "nested_priv_SQ.dcm": "pixel data not mappable: no Columns",
}
#: BitsAllocated 1 segmentations in the corpus (pydicom's own two; pydicom-data's two).
CORPUS_ONE_BIT = ("liver_1frame.dcm", "liver_expb_1frame.dcm", "liver.dcm", "liver_expb.dcm")
