"""Small, real damaged image files of every format medtransfer reads (each a few KiB, written in milliseconds).

Each maker writes one file at `path` and returns it. They are shared by tests/hostile/test_damaged.py and
benchmarks/hostile_table.py.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A grey 8-bit PNG; `rows` (filter byte + pixels per row) defaults to all zeros."""
    rows = rows if rows is not None else b"".join(b"\0" + bytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 9)) + \
        _chunk(b"IEND", b"")


def nifti(path: Path, data=None, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((12, 12, 8), np.float32) if data is None else np.asarray(data)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def nifti_claiming(path: Path, shape=(4000, 4000, 4000), payload: int = 1700) -> Path:
    """A NIfTI whose header claims `shape` float32 but which holds `payload` bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def truncated_nifti(path: Path, keep: int = 100) -> Path:
    nifti(path)
    path.write_bytes(path.read_bytes()[:keep])
    return path


def png_bomb(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A PNG whose IHDR claims width × height (1.6 gigapixels by default) with a few bytes of data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) +
                     _chunk(b"IEND", b""))
    return path


def truncated_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = b"".join(b"\0" + rng.integers(0, 255, 64, dtype=np.uint8).tobytes() for _ in range(64))
    data = png_bytes(64, 64, rows)
    path.write_bytes(data[: len(data) // 2])
    return path


def tiff_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A baseline little-endian TIFF whose tags claim width × height grey pixels in one 8-byte strip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 8)]
    ifd_offset = 16
    body = bytearray(b"II*\0" + struct.pack("<I", ifd_offset) + b"\0" * 8)
    body += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                          else struct.pack("<I", value))
    body += struct.pack("<I", 0)
    path.write_bytes(bytes(body))
    return path


def truncated_tiff(path: Path) -> Path:
    """A real 64×64 TIFF (PIL), cut in the middle of its pixel strip."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:2000])
    return path


def dicom_file(path: Path, rows: int = 32, columns: int = 32) -> Path:
    """A small CT slice written by pydicom (explicit VR little endian, 16-bit pixels)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PixelRepresentation = 1, "MONOCHROME2", 1
    dataset.PixelData = np.zeros((rows, columns), np.int16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    return path


def truncated_dicom(path: Path) -> Path:
    dicom_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1024])
    return path


def dicom_short_pixels(path: Path) -> Path:
    """A DICOM whose header claims 512×512 16-bit pixels but whose PixelData holds 32×32."""
    import pydicom

    dicom_file(path)
    dataset = pydicom.dcmread(str(path))
    dataset.Rows = dataset.Columns = 512
    dataset.save_as(str(path))
    return path


def nrrd(path: Path, sizes=(8, 8, 4), payload: int | None = None, data_file: str | None = None) -> Path:
    """A raw little-endian float NRRD; `payload` bytes of data (default: the full size), or a detached file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(np.prod(sizes)) * 4
    lines = ["NRRD0004", "type: float", f"dimension: {len(sizes)}", f"sizes: {' '.join(map(str, sizes))}",
             "endian: little", "encoding: raw"]
    if data_file is not None:
        lines.append(f"data file: {data_file}")
    header = ("\n".join(lines) + "\n\n").encode()
    body = b"" if data_file is not None else b"\0" * (count if payload is None else payload)
    path.write_bytes(header + body)
    return path


def metaimage(path: Path, sizes=(8, 8, 4), payload: int | None = None, data_file: str = "LOCAL") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(np.prod(sizes)) * 4
    header = (f"ObjectType = Image\nNDims = {len(sizes)}\nDimSize = {' '.join(map(str, sizes))}\n"
              f"ElementType = MET_FLOAT\nElementDataFile = {data_file}\n").encode()
    body = b"" if data_file != "LOCAL" else b"\0" * (count if payload is None else payload)
    path.write_bytes(header + body)
    return path
