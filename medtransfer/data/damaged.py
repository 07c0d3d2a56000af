"""A damaged image file named with its cause, from its header, before any reader spends memory on it.

MONAI's LoadImaged reports a truncated NIfTI as "applying transform <LoadImaged object at 0x…>", and PIL a
decompression bomb without the file's name. `check_image_file` reads only the header (and, for a gzipped
NIfTI, streams the data once in 1 MiB blocks when the gzip trailer disagrees) and raises `DamagedImageError`
with one line: the file, what the header claims, what the file holds, and what to do.

Formats: NIfTI (.nii, .nii.gz), PNG (chunks walked, IHDR size against the pixel limit), TIFF/JPEG/BMP (PIL's
lazy header), DICOM files (pixel data against Rows × Columns × frames), NRRD and MetaImage (.nrrd, .nhdr,
.mha, .mhd: size, type, encoding, and a detached data file confined to the data root). A format not listed is
left to its reader. The pixel limit is MEDTRANSFER_MAX_IMAGE_PIXELS (default: PIL's own, 89,478,485 ≈ 89
megapixels); PIL is told the same limit, so the reader and this check agree.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from medtransfer.errors import MedtransferError

PIXELS_ENV = "MEDTRANSFER_MAX_IMAGE_PIXELS"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_BLOCK = 1 << 20


class DamagedImageError(MedtransferError, ValueError):
    """An image file whose header and contents disagree (truncated, not the format its name says, too large)."""


def size_text(n_bytes: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n_bytes)} B"


def _shape_text(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


def max_image_pixels() -> int:
    """MEDTRANSFER_MAX_IMAGE_PIXELS, or PIL's default; PIL.Image.MAX_IMAGE_PIXELS is set to match."""
    from PIL import Image

    text = os.environ.get(PIXELS_ENV, "").strip()
    if text:
        try:
            limit = int(float(text))
        except ValueError:
            raise DamagedImageError(f"{PIXELS_ENV}={text!r}: give a number of pixels, e.g. 200000000") from None
        if limit < 1:
            raise DamagedImageError(f"{PIXELS_ENV}={text!r}: give a positive number of pixels")
        Image.MAX_IMAGE_PIXELS = limit
        return limit
    return 89478485  # PIL's default (Image.MAX_IMAGE_PIXELS before anyone changes it)


def _check_pixels(path: Path, width: int, height: int, frames: int = 1) -> None:
    limit = max_image_pixels()
    pixels = int(width) * int(height) * max(1, int(frames))
    if pixels > limit:
        raise DamagedImageError(
            f"{path}: image of {width}×{height}{f'×{frames}' if frames > 1 else ''} ({_mega(pixels)} megapixels) "
            f"exceeds the limit of {_mega(limit)} megapixels (a decompression bomb or a mislabelled file); "
            f"set {PIXELS_ENV} to allow it")


def _mega(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f}" if pixels >= 1e7 else f"{pixels / 1e6:.1f}"


def _nifti(path: Path) -> None:
    import nibabel as nib

    try:
        header = nib.load(str(path)).header  # the header only: the data stays an unread proxy
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get("vox_offset", 352))
    except Exception as error:  # nibabel, gzip and zlib each raise their own kind for a bad header
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedImageError(f"{path}: not a readable NIfTI: the header cannot be read ({message})") from None
    claimed = offset + math.prod(shape) * dtype.itemsize
    claim = f"header claims {_shape_text(shape)} {dtype.name} ({size_text(math.prod(shape) * dtype.itemsize)})"
    on_disk = path.stat().st_size
    if not path.name.endswith(".gz"):
        if on_disk < claimed:
            raise DamagedImageError(f"{path}: {claim} but the file holds {size_text(on_disk)}: truncated or not a NIfTI")
        return
    if _gzip_trailer_size(path) == claimed % (1 << 32):
        return
    held = _gunzipped_size(path, claimed)
    if held < claimed:
        raise DamagedImageError(f"{path}: {claim} but the file holds {size_text(on_disk)} "
                                f"({size_text(held)} uncompressed): truncated or not a NIfTI")


def _gzip_trailer_size(path: Path) -> int | None:
    """ISIZE of the last gzip member: the uncompressed size modulo 2³²."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() < 18:
            return None
        stream.seek(-4, os.SEEK_END)
        return struct.unpack("<I", stream.read(4))[0]


def _gunzipped_size(path: Path, enough: int) -> int:
    """Bytes the gzip stream yields, counted block by block (stops at `enough` or where the stream breaks)."""
    held = 0
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as stream:
            while held < enough:
                block = stream.read(_BLOCK)
                if not block:
                    break
                held += len(inflate.decompress(block, _BLOCK))
                while inflate.unconsumed_tail and held < enough:
                    held += len(inflate.decompress(inflate.unconsumed_tail, _BLOCK))
                if inflate.eof:  # a later gzip member (rare): count it too
                    rest = inflate.unused_data
                    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    if rest:
                        held += len(inflate.decompress(rest, _BLOCK))
    except zlib.error:
        pass
    return held


def _png(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as stream:
        if stream.read(8) != _PNG_SIGNATURE:
            raise DamagedImageError(f"{path}: not a PNG (no PNG signature)")
        position, seen_end, header = 8, False, None
        while position + 8 <= size:
            stream.seek(position)
            length, kind = struct.unpack(">I4s", stream.read(8))
            if kind == b"IHDR":
                header = stream.read(min(length, 13))
            position += 12 + length
            if kind == b"IEND":
                seen_end = True
                break
    if header is None or len(header) < 8:
        raise DamagedImageError(f"{path}: PNG without an image header (IHDR): truncated or not a PNG")
    width, height = struct.unpack(">II", header[:8])
    _check_pixels(path, width, height)
    if not seen_end or position > size:
        raise DamagedImageError(f"{path}: PNG of {width}×{height} ends after {size_text(size)}, inside its data: "
                                "truncated (copy it again)")


def _pil(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check would raise without the file name; ours follows
    try:
        with Image.open(path) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            tags = getattr(image, "tag_v2", None)
            extents = []
            if tags is not None:  # TIFF: every strip / tile must lie inside the file
                for offsets, counts in ((273, 279), (324, 325)):
                    if offsets in tags and counts in tags:
                        extents += [int(o) + int(c) for o, c in zip(tags[offsets], tags[counts])]
    except UnidentifiedImageError:
        raise DamagedImageError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} image "
                                "(the header is not one PIL knows)") from None
    except (OSError, SyntaxError, struct.error, ValueError) as error:
        raise DamagedImageError(f"{path}: unreadable image header ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    _check_pixels(path, width, height, frames if tags is not None else 1)
    size = path.stat().st_size
    if extents and max(extents) > size:
        raise DamagedImageError(f"{path}: TIFF of {width}×{height} names image data up to byte {max(extents):,} but "
                                f"the file holds {size:,} bytes: truncated (copy it again)")


def _dicom(path: Path) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(str(path), defer_size=1024)  # large values (the pixels) are only measured
    except (InvalidDicomError, EOFError, OSError, struct.error, ValueError, KeyError) as error:
        raise DamagedImageError(f"{path}: not a readable DICOM file ({str(error).strip() or type(error).__name__})") \
            from None
    if "PixelData" not in dataset:
        return
    element = dataset.get_item("PixelData", keep_deferred=True)  # its length and offset, not its value
    length = getattr(element, "length", None)
    tell = getattr(element, "value_tell", None)
    size = path.stat().st_size
    if length is None or length == 0xFFFFFFFF:  # encapsulated (compressed) pixels: their reader checks them
        return
    if tell is not None and tell + length > size:
        raise DamagedImageError(f"{path}: DICOM pixel data of {size_text(length)} ends after the file "
                                f"({size_text(size)}): truncated (copy the series again)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits = int(dataset.BitsAllocated)
        samples = int(dataset.get("SamplesPerPixel", 1))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise DamagedImageError(f"{path}: DICOM with pixel data but without Rows, Columns or BitsAllocated") from None
    _check_pixels(path, rows, columns, frames)
    expected = rows * columns * samples * frames * bits // 8
    if length < expected:
        raise DamagedImageError(f"{path}: DICOM header claims {f'{frames} frames of ' if frames > 1 else ''}"
                                f"{rows}×{columns} {bits}-bit pixels ({size_text(expected)}) but the pixel data holds "
                                f"{size_text(length)}: truncated or a wrong header")


_NRRD_TYPES = {"signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
               "short": 2, "short int": 2, "signed short": 2, "int16": 2, "int16_t": 2, "ushort": 2,
               "unsigned short": 2, "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4, "int32_t": 4,
               "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4, "longlong": 8, "int64": 8, "int64_t": 8,
               "ulonglong": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8}
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def _text_header(path: Path, separator: str, limit: int = 1 << 16) -> tuple[dict[str, str], int]:
    """Key/value lines of an NRRD or MetaImage header, and the byte offset where the data starts."""
    with open(path, "rb") as stream:
        head = stream.read(limit)
    fields, offset = {}, 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").strip()
        if not line:
            if separator == ":":  # NRRD: a blank line ends the header
                return fields, offset
            continue
        if line.startswith("#") or separator not in line:
            continue
        key, value = line.split(separator, 1)
        fields[key.strip().lower()] = value.strip().lstrip("=").strip()
        if separator == "=" and key.strip().lower() == "elementdatafile":
            return fields, offset  # MetaImage: ElementDataFile is the last header line
    return fields, offset


def _detached(path: Path, name: str, root: Path | None, key: str) -> Path | None:
    from medtransfer.data.paths import confined

    if not name or name.upper() == "LOCAL" or name.startswith("LIST") or "%" in name:
        return None
    return confined(root or path.parent, (path.parent / name).absolute(), key, str(path))


def _nrrd(path: Path, root: Path | None) -> None:
    with open(path, "rb") as stream:
        magic = stream.read(4)
    if magic != b"NRRD":
        raise DamagedImageError(f"{path}: not an NRRD file (no NRRD magic)")
    fields, offset = _text_header(path, ":")
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        itemsize = _NRRD_TYPES[fields["type"].lower()]
    except (KeyError, ValueError):
        raise DamagedImageError(f"{path}: NRRD header without usable 'sizes' and 'type'") from None
    data_file = _detached(path, fields.get("data file") or fields.get("datafile", ""), root, "data file")
    _check_pixels(path, math.prod(sizes), 1)
    if fields.get("encoding", "raw").lower() != "raw":
        return
    claimed = math.prod(sizes) * itemsize
    held = data_file.stat().st_size if data_file is not None and data_file.exists() else \
        path.stat().st_size - offset if data_file is None else 0
    if held < claimed:
        where = data_file or path
        raise DamagedImageError(f"{where}: NRRD header claims {_shape_text(sizes)} {fields['type']} "
                                f"({size_text(claimed)}) but the file holds {size_text(max(held, 0))}: truncated")


def _metaimage(path: Path, root: Path | None) -> None:
    fields, offset = _text_header(path, "=")
    try:
        sizes = [int(s) for s in fields["dimsize"].split()]
        itemsize = _META_TYPES[fields["elementtype"].upper()] * int(fields.get("elementnumberofchannels", 1))
    except (KeyError, ValueError):
        raise DamagedImageError(f"{path}: not a readable MetaImage: no usable DimSize and ElementType") from None
    data_file = _detached(path, fields.get("elementdatafile", ""), root, "ElementDataFile")
    _check_pixels(path, math.prod(sizes), 1)
    if fields.get("compresseddata", "false").lower() == "true":
        return
    claimed = math.prod(sizes) * itemsize
    held = data_file.stat().st_size if data_file is not None and data_file.exists() else \
        path.stat().st_size - offset if data_file is None else 0
    if held < claimed:
        raise DamagedImageError(f"{data_file or path}: MetaImage header claims {_shape_text(sizes)} "
                                f"{fields['elementtype']} ({size_text(claimed)}) but the file holds "
                                f"{size_text(max(held, 0))}: truncated")


def check_image_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Raise DamagedImageError when the header of `path` disagrees with the file; a folder (a DICOM series) and
    a format not listed above pass. `root` confines a detached data file (NRRD, MetaImage)."""
    path = Path(path)
    if not path.is_file():
        return
    name = path.name.lower()
    root = Path(root) if root is not None else None
    if name.endswith((".nii", ".nii.gz")):
        _nifti(path)
    elif name.endswith(".png"):
        _png(path)
    elif name.endswith(_PIL_SUFFIXES):
        _pil(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _nrrd(path, root)
    elif name.endswith((".mha", ".mhd")):
        _metaimage(path, root)
    elif name.endswith((".dcm", ".dicom", ".ima")):
        _dicom(path)
