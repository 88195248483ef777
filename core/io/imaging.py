"""Scan decoding: DICOM (Hounsfield units) and raster images, windowing, display images."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageOps
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.io.volume import parse_slice_path, read_volume_slice


class ScanError(ValueError):
    """A scan that cannot be read; the message is one readable sentence for the user."""


MASK_COLOUR = (0, 255, 0)   # a true bleed's outline, the same on every picture (overlays, galleries, pages)
# (center, width) in Hounsfield units. Brain/subdural/soft tissue are the RSNA 2019 winners' channels.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "stroke": (40.0, 40.0),
    "bone": (600.0, 2800.0),
    "soft_tissue": (40.0, 380.0),
}
# A run's input windows (train.py --windows), one channel each; the first is always the brain window, the grey every
# page shows and the classical features read. "rsna3": the RSNA 2019 winners' three channels.
WINDOW_SETS: dict[str, tuple[str, ...]] = {"brain": ("brain",), "rsna3": ("brain", "subdural", "soft_tissue")}

# Checked against the declared header size, before any pixel is decoded or allocated.
MAX_PIXELS = 60_000_000
MAX_SIDE = 16384
MIN_SIDE = 2  # a 1xN "image" is a line, not a slice
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # fewer parsers exposed to untrusted uploads
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy fields with == is ambiguous
class Scan:
    """One decoded 2-D slice. Holds no patient-identifying DICOM tags, by construction."""

    pixels: np.ndarray  # float32 2-D: HU for CT DICOM, [0, 1] intensity otherwise
    modality: str  # "CT", "MR", other DICOM modality ("OT" when absent), or "raster"
    is_hu: bool
    pixel_spacing: tuple[float, float] | None  # mm (row, col)
    image: np.ndarray  # uint8 (H, W) grey, or (H, W, C) for a window set of C windows ("rsna3")
    window: str | None  # window preset or set used to make `image`; None when pixels were not HU
    series_uid: str | None
    instance_number: int | None
    slice_position: float | None  # mm along the slice normal, for ordering slices of a series
    n_frames: int = 1
    # A one-way key (sha256) of the DICOM PatientID, else of the StudyInstanceUID: slices sharing it come from one
    # patient (study) and must share a split. Never the ID itself.
    patient_key: str | None = None
    stored_shape: tuple[int, int] | None = None  # (rows, cols) as stored, before load_scan's max_side


def apply_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] float32 through a linear window (values outside are clipped)."""
    lo = center - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - lo) / float(width)
    return np.clip(out, 0.0, 1.0, out=out)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, rounded (values outside [0, 1] are clipped)."""
    return np.rint(np.clip(np.asarray(x01, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def display_grey(image: np.ndarray) -> np.ndarray:
    """The grey a windowed slice is shown (and framed, hashed, featured) as: an (H, W) slice itself, the first
    channel, the brain window, of an (H, W, C) window set."""
    return image if image.ndim == 2 else image[..., 0]


def windows_of(card_or_run: dict) -> str:
    """The window set a card or run.json records; folders written before window sets existed read brain alone."""
    return card_or_run.get("windows", "brain")


def load_scan(source: str | os.PathLike | bytes | BinaryIO, window: str | None = None,
              frame: int | None = None, max_side: int | None = None) -> Scan:
    """Decode DICOM/PNG/JPEG/TIFF/BMP (by content) from a path, bytes or file, or one slice of a NIfTI volume
    (`ct_scans/049.nii#z=12`, core.io.volume); `window`: HU window; raises ScanError.
    `max_side`: area-average a larger slice down to this long side while decoding, before any float copy.
    A window set (WINDOW_SETS) gives an (H, W, C) image; a slice without HU then repeats its grey C times."""
    if window not in (None, *WINDOW_SETS, *WINDOWS):
        raise ValueError(f"unknown window {window!r}; choose one of {sorted(WINDOWS)} or a set {sorted(WINDOW_SETS)}")
    address = parse_slice_path(source)
    if address is not None:
        return _volume_scan(*address, window, frame, max_side)
    data = _read_source(source)
    if not data:
        raise ScanError("The file is empty.")
    try:
        if data[128:132] == b"DICM":
            return _dicom_scan(pydicom.dcmread(io.BytesIO(data), force=True), window, frame, max_side)
        image = _open_raster(data)
        if image is not None:
            return _raster_scan(image, window, frame, max_side)
        ds = _sniff_dicom(data)  # DICOM files written without the 128-byte preamble
        if ds is None:
            raise ScanError("The file is not a recognised image (PNG, JPEG, TIFF, BMP or DICOM).")
        return _dicom_scan(ds, window, frame, max_side)
    except ScanError:
        raise
    except Exception as err:  # every decoder failure reaches the user as one sentence
        raise ScanError(f"The scan could not be decoded ({_one_line(err)}).") from err


def load_scan_with_digest(path: str | os.PathLike, window: str | None = None) -> tuple[Scan, str]:
    """(the scan through `window`, the sha256 of what it was read from): the file's bytes, or a volume slice's
    stored values (hashing a whole volume per slice would read it once per slice)."""
    if parse_slice_path(path) is not None:
        scan = load_scan(path, window)
        return scan, hashlib.sha256(scan.pixels.tobytes()).hexdigest()
    data = _read_source(path)
    return load_scan(data, window), hashlib.sha256(data).hexdigest()


def _volume_scan(volume: Path, z: int, window: str | None, frame: int | None, max_side: int | None) -> Scan:
    """Slice z of a NIfTI volume, read as CT in HU (the published NIfTI head CT sets store HU)."""
    _frame_index(1, frame)
    try:
        hu, spacing, position = read_volume_slice(volume, z)
    except OSError as err:
        raise ScanError(f"Cannot read '{volume.name}': {err.strerror or 'unreadable path'}.") from err
    except Exception as err:
        raise ScanError(f"The volume slice could not be decoded ({_one_line(err)}).") from err
    _check_size(hu.shape[1], hu.shape[0])
    _check_finite(hu)
    stored_shape = hu.shape
    hu, kr, kc = _block_mean(hu, max_side)
    image, applied = _render(hu, True, window)
    return Scan(pixels=hu.astype(np.float32, copy=False), modality="CT", is_hu=True,
                pixel_spacing=(spacing[0] * kr, spacing[1] * kc), image=image, window=applied, series_uid=None,
                instance_number=None, slice_position=position, stored_shape=stored_shape)


def _one_line(err: BaseException, limit: int = 160) -> str:
    """A decoder's message, flattened (some embed tracebacks) and cut at a word boundary."""
    text = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "..."


def _read_source(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.exists() and not path.is_file():  # a directory, a device such as /dev/zero, ...
            raise ScanError(f"Cannot read '{path.name}': it is not a regular file.")
        try:
            return path.read_bytes()
        except OSError as err:
            raise ScanError(f"Cannot read '{path.name}': {err.strerror or 'unreadable path'}.") from err
    if hasattr(source, "read"):
        # Streamlit reruns hand over the same UploadedFile, already read to its end.
        if getattr(source, "seekable", lambda: False)():
            source.seek(0)
        try:
            return bytes(source.read())
        except OSError as err:
            raise ScanError(f"The upload could not be read ({_one_line(err)}).") from err
    raise TypeError(f"load_scan expects a path, bytes or a binary file object, not {type(source).__name__}")


def _check_size(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise ScanError(f"The image is {width}x{height} pixels; each side must be between "
                        f"{MIN_SIDE} and {MAX_SIDE} pixels.")
    if width * height > MAX_PIXELS:
        raise ScanError(f"The image declares {width}x{height} pixels, more than the "
                        f"{MAX_PIXELS // 1_000_000}-megapixel limit (possible decompression bomb).")


def _frame_index(n_frames: int, frame: int | None) -> int:
    if frame is None:
        if n_frames > 1:
            raise ScanError(f"This scan has {n_frames} frames; pass frame=0 to frame={n_frames - 1} "
                            "to choose one.")
        return 0
    if not 0 <= frame < n_frames:
        raise ScanError(f"frame={frame} is out of range: this scan has {n_frames} frame(s).")
    return frame


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ScanError("The image contains non-finite pixel values (NaN or infinity).")


def _unit_range(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale [lo, hi] to [0, 1]; a constant image becomes all zeros instead of dividing by zero."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _render(pixels: np.ndarray, is_hu: bool, window: str | None) -> tuple[np.ndarray, str | None]:
    window = window or "brain"
    names = WINDOW_SETS.get(window, (window,))
    if not is_hu:  # already an intensity; HU windows do not apply
        grey = to_uint8(pixels)
        return (np.repeat(grey[..., None], len(names), axis=-1) if len(names) > 1 else grey), None
    images = [to_uint8(apply_window(pixels, *WINDOWS[w])) for w in names]
    return (np.stack(images, -1) if len(images) > 1 else images[0]), window


def _open_raster(data: bytes) -> Image.Image | None:
    """Open (header only) a raster image, or None when Pillow does not recognise the bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
        except Image.UnidentifiedImageError:
            return None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ScanError("The image declares too many pixels to decode safely "
                            "(possible decompression bomb).") from err
    _check_size(*image.size)
    return image


def _raster_scan(image: Image.Image, window: str | None, frame: int | None, max_side: int | None) -> Scan:
    n_frames = getattr(image, "n_frames", 1)
    # Unlike DICOM, default to the first page: phone JPEGs (MPO) carry a second preview frame.
    index = _frame_index(n_frames, 0 if frame is None else frame)
    if index:
        image.seek(index)
        _check_size(*image.size)
    width, height = image.size
    try:  # the full decode: a truncated file fails here, not later in a model
        image = _shrink(image, max_side)
    except Exception as err:
        raise ScanError(f"The image data is truncated or corrupt ({_one_line(err)}).") from err
    if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):  # exif_transpose turns it a quarter
        width, height = height, width
    pixels = _raster_grey(ImageOps.exif_transpose(image))
    image_u8, _ = _render(pixels, False, window)
    return Scan(pixels=pixels, modality="raster", is_hu=False, pixel_spacing=None, image=image_u8,
                window=None, series_uid=None, instance_number=None, slice_position=None,
                n_frames=n_frames, stored_shape=(height, width))


def _shrunk_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """The decoded image, box-averaged to a long side of max_side when larger, still in integer modes:
    a JPEG decodes straight at 1/2 to 1/8 scale (draft), then Pillow's BOX filter averages each area."""
    if max_side is None or max(image.size) <= max_side:
        image.load()
        return image
    size = _shrunk_size(*image.size, max_side)
    image.draft(None, size)  # a no-op except for JPEG
    image.load()
    if image.mode in ("LA", "La"):
        image = image.getchannel(0)
    elif image.mode in ("1", "P", "PA"):  # resizing these picks pixels; grey levels average
        image = image.convert("L")
    elif not image.mode.startswith(("I", "F", "RGB")) or image.mode in ("RGBA", "RGBa"):  # alpha is dropped anyway
        image = image.convert("RGB")
    return image.resize(size, Image.Resampling.BOX)


def _raster_grey(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 grey in [0, 1]; colour becomes luminance, alpha is dropped."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):  # 32-bit int / float: no fixed range, so use the one the data occupies
        values = np.asarray(image, dtype=np.float64)
        _check_finite(values)
        lo, hi = (0.0, 65535.0) if mode == "I" else (0.0, 1.0)  # 16-bit data kept in I; unit floats
        if values.min() < lo or values.max() > hi:
            lo, hi = float(values.min()), float(values.max())
        return _unit_range(values, lo, hi)
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(image.getchannel(0).convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(image.convert("RGBA" if mode in ("P", "PA") else "RGB"), dtype=np.float32)
    return rgb[..., :3] @ LUMA / 255.0


def _sniff_dicom(data: bytes) -> pydicom.Dataset | None:
    """A preamble-less DICOM (file meta or group 0008 first), or None; force=True 'reads' any bytes."""
    try:
        with warnings.catch_warnings():  # pydicom warns about every oddity it meets in non-DICOM bytes
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        first_group = min(ds.keys()).group if len(ds) else None
    except Exception:
        return None
    return ds if len(ds.file_meta) or first_group == 0x0008 else None


def _transfer_syntax(ds: pydicom.Dataset):
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:  # no file meta: the encoding pydicom detected while parsing is the syntax
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else (
            ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def _check_decoder(syntax) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ScanError(f"DICOM pixel data in transfer syntax '{syntax.name}' ({syntax}) cannot be "
                        "decoded: pydicom has no decoder for it.") from None
    if not decoder.is_available:
        raise ScanError(f"DICOM pixel data in transfer syntax '{syntax.name}' needs a decoder plugin "
                        f"that is not installed: {'; '.join(decoder.missing_dependencies)}.")


def _optional(ds: pydicom.Dataset, keyword: str, convert):
    """Metadata that only helps (grouping, ordering); a malformed value must not block the image."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else convert(value)
    except Exception:
        return None


def _raw_text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """A text element as stored, without pydicom's value validation: RSNA 2019 writes UIDs as 'ID_<hex>', which
    pydicom warns about (and logs) on every conversion; here they only group and order slices."""
    try:
        value = ds.get_item(keyword).value
    except Exception:   # absent (get_item gives None) or unreadable
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).strip(" \0") if value is not None else ""
    return text or None


def _patient_key(ds: pydicom.Dataset) -> str | None:
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = _raw_text(ds, keyword)
        if value:
            return hashlib.sha256(f"hemolens {keyword} {value}".encode()).hexdigest()[:20]
    return None


def _repair_wrapped_intercept(ds: pydicom.Dataset, values: np.ndarray, modality: str) -> tuple[np.ndarray, float]:
    """(stored values, intercept), repaired where RSNA 2019's known fault shows: a CT with 12-bit unsigned pixels and
    an intercept above -100 (air cannot be -1000 HU then). The published fix: add 1000 to the stored values, wrap
    at 4096, use intercept -1000."""
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    if (modality != "CT" or int(ds.get("BitsStored") or 0) != 12 or int(ds.get("PixelRepresentation") or 0) != 0
            or intercept <= -100):
        return values, intercept
    shifted = values.astype(np.int32) + 1000
    return np.where(shifted >= 4096, shifted - 4096, shifted), -1000.0


def _along_normal(ds: pydicom.Dataset, position) -> float:
    """ImagePositionPatient projected on the slice normal: slice order for tilted and non-axial series too."""
    orientation = _optional(ds, "ImageOrientationPatient", lambda v: np.asarray(v, dtype=np.float64))
    if orientation is None or orientation.shape != (6,):
        return float(position[2])
    return float(np.cross(orientation[:3], orientation[3:]) @ np.asarray(position, dtype=np.float64))


def _block_mean(values: np.ndarray, max_side: int | None) -> tuple[np.ndarray, int, int]:
    """(values area-averaged by whole k x k blocks to a long side of at most max_side, k rows, k cols):
    float32 only at the reduced size; edge rows and columns short of a block are dropped (< 1 output pixel)."""
    k = -(-max(values.shape[:2]) // max_side) if max_side else 1
    if k <= 1:
        return values, 1, 1
    kr, kc = min(k, values.shape[0]), min(k, values.shape[1])
    h, w = values.shape[0] // kr, values.shape[1] // kc
    blocks = values[:h * kr, :w * kc].reshape(h, kr, w, kc, *values.shape[2:])  # a view: no copy
    return blocks.mean(axis=(1, 3), dtype=np.float32), kr, kc


def _dicom_scan(ds: pydicom.Dataset, window: str | None, frame: int | None, max_side: int | None) -> Scan:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ScanError("The DICOM file has no pixel data (it is not an image, e.g. a report or "
                        "structure set).")
    _check_size(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0))
    n_frames = int(ds.get("NumberOfFrames") or 1)
    index = _frame_index(n_frames, frame)
    _check_decoder(_transfer_syntax(ds))
    values = pixel_array(ds, index=index if n_frames > 1 else None)  # only the chosen frame
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        values = apply_color_lut(values, ds)
    stored_shape = values.shape[:2]
    modality = str(ds.get("Modality") or "OT").upper()
    values, intercept = _repair_wrapped_intercept(ds, values, modality)
    values, kr, kc = _block_mean(values, max_side)
    is_colour = values.ndim == 3
    values = values.astype(np.float32) @ LUMA if is_colour else values.astype(np.float32)
    slope = float(ds.get("RescaleSlope") or 1.0)
    values = values * slope + intercept
    _check_finite(values)
    is_hu = not is_colour and (modality == "CT" or str(ds.get("RescaleType", "")).upper() == "HU")
    if is_hu:
        pixels = values.astype(np.float32)  # HU are physical: MONOCHROME1 only flips display polarity
    else:
        lo, hi = np.percentile(values, [1, 99])
        if hi <= lo:  # mostly-constant image: fall back to the full range
            lo, hi = values.min(), values.max()
        pixels = _unit_range(values, float(lo), float(hi))
        if photometric == "MONOCHROME1":  # low values are meant to look bright
            pixels = 1.0 - pixels
    image, applied = _render(pixels, is_hu, window)
    return Scan(
        pixels=pixels, modality=modality, is_hu=is_hu,
        pixel_spacing=_optional(ds, "PixelSpacing", lambda v: (float(v[0]) * kr, float(v[1]) * kc)),
        image=image, window=applied,
        series_uid=_raw_text(ds, "SeriesInstanceUID"),
        instance_number=_optional(ds, "InstanceNumber", int),
        slice_position=_optional(ds, "ImagePositionPatient", lambda v: _along_normal(ds, v)),
        n_frames=n_frames, stored_shape=stored_shape, patient_key=_patient_key(ds),
    )
