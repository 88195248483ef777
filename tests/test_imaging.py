"""core.imaging: DICOM and raster decoding, HU, windows, and one-sentence errors for bad input."""
import io
import struct
import zlib
from dataclasses import fields

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MPEG2MPML

from core.io.imaging import WINDOW_SETS, WINDOWS, Scan, ScanError, apply_window, load_scan, to_uint8

PATIENT = "Doe^Jane^Secretname"
STORED = np.array([[0, 1024, 1064, 3000]] * 4, dtype=np.int16)  # -> HU -1024, 0, 40, 1976


def make_dicom(stored=STORED, *, modality="CT", photometric="MONOCHROME2", rescale=(1, -1024),
               frames=None, rows=None, cols=None, pixel_data=True, preamble=True) -> bytes:
    """A small signed 16-bit DICOM built in memory, with patient tags that must never leak."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT, "PID-987654", "19600101"
    ds.Modality, ds.SOPClassUID = modality, CTImageStorage
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.InstanceNumber, ds.ImagePositionPatient, ds.PixelSpacing = 7, [0, 0, -12.5], [0.5, 0.75]
    ds.Rows = stored.shape[-2] if rows is None else rows
    ds.Columns = stored.shape[-1] if cols is None else cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if frames:
        ds.NumberOfFrames = frames
    if pixel_data:
        ds.PixelData = stored.astype(np.int16).tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def raster_bytes(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares a size: enough to test refusals that must happen before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def assert_refused(source, keyword: str, **kwargs) -> str:
    with pytest.raises(ScanError) as info:
        load_scan(source, **kwargs)
    message = str(info.value)
    assert type(info.value) is ScanError
    assert "\n" not in message and "Traceback" not in message and message.endswith(".")
    assert keyword.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- bad input

def test_empty_bytes_and_empty_file(tmp_path):
    assert_refused(b"", "empty")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_refused(tmp_path / "empty.png", "empty")


@pytest.mark.parametrize("data", [
    b"hello, this is a text file and not a scan\n" * 20,
    np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    b"\0" * 300,
], ids=["text", "random-bytes", "zeros"])
def test_not_an_image(data):
    assert_refused(data, "not a recognised image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_raster(fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    data = raster_bytes(Image.fromarray(noise), fmt)
    assert_refused(data[: len(data) // 2], "truncated")


@pytest.mark.parametrize("size", [(8000, 8000), (10000, 10000), (16000, 16000)],
                         ids=["own-60MP-limit", "pillow-warning", "pillow-error"])
def test_decompression_bomb_refused_from_header(size):
    assert_refused(png_header(*size), "decompression bomb")


@pytest.mark.parametrize("size", [(1, 500), (500, 1), (20000, 2)])
def test_absurd_dimensions(size):
    assert_refused(png_header(*size), "each side must be between")


def test_zero_size_image():
    assert_refused(png_header(0, 10), "not a recognised image")  # Pillow rejects it while parsing
    assert_refused(make_dicom(rows=0), "each side must be between")


def test_dicom_without_pixel_data():
    assert_refused(make_dicom(pixel_data=False), "no pixel data")
    assert_refused(get_testdata_file("rtstruct.dcm"), "no pixel data")  # preamble-less, real file


def test_huge_dicom_header_refused_before_allocation():
    assert_refused(make_dicom(rows=16000, cols=16000), "megapixel")
    assert_refused(make_dicom(rows=60000, cols=60000), "each side must be between")


def test_truncated_dicom():
    assert_refused(get_testdata_file("MR_truncated.dcm"), "could not be decoded")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_tiff(bad):
    values = np.full((8, 8), 0.5, dtype=np.float32)
    values[2, 3] = bad
    assert_refused(raster_bytes(Image.fromarray(values), "TIFF"), "non-finite")


def test_unreadable_paths(tmp_path):
    assert_refused(tmp_path / "missing.png", "cannot read 'missing.png'")
    assert_refused(tmp_path, "not a regular file")


def test_undecodable_transfer_syntax():
    ds = pydicom.dcmread(io.BytesIO(make_dicom()))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([ds.PixelData])  # refused by syntax, so the content never matters
    buf = io.BytesIO()
    ds.save_as(buf)
    assert_refused(buf.getvalue(), "MPEG2")


def test_multiframe_needs_a_frame_and_validates_it():
    stack = np.stack([np.full((4, 4), 1024 + 10 * k, np.int16) for k in range(3)])
    data = make_dicom(stack, frames=3)
    assert_refused(data, "frame=0 to frame=2")
    assert_refused(data, "out of range", frame=3)
    scan = load_scan(data, frame=1)
    assert scan.n_frames == 3 and scan.pixels.shape == (4, 4)
    np.testing.assert_array_equal(scan.pixels, 10.0)


def test_unknown_window_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown window"):
        load_scan(make_dicom(), window="lung")


# ---------------------------------------------------------------- DICOM

def test_ct_dicom_exact_hu_metadata_and_brain_window(tmp_path):
    path = tmp_path / "slice.png"  # the name lies: detection is by content
    path.write_bytes(make_dicom())
    scan = load_scan(path)
    assert (scan.modality, scan.is_hu, scan.window, scan.n_frames) == ("CT", True, "brain", 1)
    assert scan.pixels.dtype == np.float32
    np.testing.assert_array_equal(scan.pixels[0], [-1024, 0, 40, 1976])
    np.testing.assert_array_equal(scan.image[0], [0, 0, 128, 255])  # brain window 40/80
    assert scan.image.dtype == np.uint8 and scan.image.shape == (4, 4)
    assert scan.pixel_spacing == (0.5, 0.75)
    assert (scan.series_uid, scan.instance_number, scan.slice_position) == (
        "1.2.826.0.1.3680043.8.498.1", 7, -12.5)


def test_scan_keeps_no_patient_tags():
    scan = load_scan(make_dicom())
    assert set(vars(scan)) == {f.name for f in fields(Scan)}  # nothing hidden, e.g. the dataset
    for value in vars(scan).values():
        text = repr(value) if not isinstance(value, np.ndarray) else ""
        assert "Secretname" not in text and "PID-987654" not in text and "19600101" not in text


def test_bytes_bytesio_and_path_agree(tmp_path):
    data = make_dicom()
    (tmp_path / "a").write_bytes(data)
    stream = io.BytesIO(data)
    stream.read()  # a Streamlit rerun hands over an upload already read to its end
    for source in (data, stream, str(tmp_path / "a")):
        np.testing.assert_array_equal(load_scan(source).pixels[0], [-1024, 0, 40, 1976])


def test_missing_rescale_defaults_to_identity():
    scan = load_scan(make_dicom(rescale=None))
    np.testing.assert_array_equal(scan.pixels[0], [0, 1024, 1064, 3000])


def test_preamble_less_dicom_detected_by_content():
    data = make_dicom(preamble=False)
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(load_scan(data).pixels[0], [-1024, 0, 40, 1976])


def test_monochrome1_inverts_intensity_but_not_hu():
    stored = np.arange(16, dtype=np.int16).reshape(4, 4) * 100
    mono2 = load_scan(make_dicom(stored, modality="MR", rescale=None))
    mono1 = load_scan(make_dicom(stored, modality="MR", rescale=None, photometric="MONOCHROME1"))
    assert not mono2.is_hu and mono2.window is None
    assert mono2.pixels.min() == 0.0 and mono2.pixels.max() == 1.0  # 1st-99th percentile stretch
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels)
    ct1 = load_scan(make_dicom(photometric="MONOCHROME1"))
    np.testing.assert_array_equal(ct1.pixels[0], [-1024, 0, 40, 1976])


def test_rsna3_window_set_gives_three_distinct_channels():
    stored = (np.arange(64, dtype=np.int16).reshape(8, 8) * 8 + 900)  # HU -124 .. 380
    scan = load_scan(make_dicom(stored), window="rsna3")
    assert scan.image.shape == (8, 8, 3) and scan.image.dtype == np.uint8 and scan.window == "rsna3"
    for k, name in enumerate(WINDOW_SETS["rsna3"]):
        np.testing.assert_array_equal(scan.image[..., k], to_uint8(apply_window(scan.pixels, *WINDOWS[name])))
    channels = [scan.image[..., k] for k in range(3)]
    assert not np.array_equal(channels[0], channels[1]) and not np.array_equal(channels[1], channels[2])


def test_pydicom_ct_small():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = load_scan(path, window="bone")
    assert (scan.modality, scan.is_hu, scan.window) == ("CT", True, "bone")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(scan.pixels, expected.astype(np.float32))


@pytest.mark.parametrize("twin", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm"])
def test_compressed_dicom_matches_uncompressed_twin(twin):
    plain = load_scan(get_testdata_file("MR_small.dcm"))
    packed = load_scan(get_testdata_file(twin))
    assert pydicom.dcmread(get_testdata_file(twin)).file_meta.TransferSyntaxUID.is_compressed
    assert plain.modality == packed.modality == "MR" and not packed.is_hu
    assert plain.pixels.shape == (64, 64) and plain.pixels.std() > 0.1
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


# ---------------------------------------------------------------- raster

def test_png_16bit_scaling(tmp_path):
    values = np.array([[0, 257, 32768, 65535]] * 2, dtype=np.uint16)
    path = tmp_path / "scan.dcm"  # the name lies: detection is by content
    path.write_bytes(raster_bytes(Image.fromarray(values), "PNG"))
    scan = load_scan(path)
    assert (scan.modality, scan.is_hu, scan.window, scan.pixel_spacing) == ("raster", False, None, None)
    np.testing.assert_allclose(scan.pixels[0], values[0] / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(scan.image[0], [0, 1, 128, 255])


def test_rgba_drops_alpha_and_takes_luminance():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red still counts as red
    rgba[1, 1] = (100, 100, 100, 255)
    scan = load_scan(raster_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert scan.pixels.shape == (2, 2)
    np.testing.assert_allclose(scan.pixels, [[0.299, 0], [0, 100 / 255]], atol=1e-6)


def test_palette_image():
    image = Image.new("P", (3, 2))
    image.putpalette([0, 0, 0, 0, 255, 0, 200, 200, 200] + [0] * 759)
    image.putdata([0, 1, 2, 2, 1, 0])
    scan = load_scan(raster_bytes(image, "PNG"))
    np.testing.assert_allclose(scan.pixels[0], [0, 0.587, 200 / 255], atol=1e-6)


def test_grey_with_alpha():
    la = np.dstack([np.full((2, 3), 51, np.uint8), np.zeros((2, 3), np.uint8)])
    scan = load_scan(raster_bytes(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_allclose(scan.pixels, 0.2, atol=1e-6)


def test_exif_orientation_applied():
    grey = np.zeros((20, 40), np.uint8)
    grey[:, 20:] = 255  # stored: dark left half, bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    scan = load_scan(raster_bytes(Image.fromarray(grey), "JPEG", exif=exif, quality=95))
    assert scan.pixels.shape == (40, 20)
    assert scan.pixels[:15].mean() < 0.1 and scan.pixels[25:].mean() > 0.9  # left went to the top


def test_tiff_and_bmp():
    grey = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)
    tiff = load_scan(raster_bytes(Image.fromarray(grey), "TIFF"))
    np.testing.assert_allclose(tiff.pixels, grey / 255.0, atol=1e-6)
    np.testing.assert_array_equal(tiff.image, grey)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # grey stored as RGB, as many datasets do
    bmp = load_scan(raster_bytes(Image.fromarray(rgb), "BMP"))
    np.testing.assert_array_equal(bmp.image, grey)


def test_32bit_int_and_float_tiff_ranges():
    as_16bit = np.array([[0, 65535], [32768, 1000]], np.int32)
    scan = load_scan(raster_bytes(Image.fromarray(as_16bit), "TIFF"))
    np.testing.assert_allclose(scan.pixels, as_16bit / 65535.0, rtol=1e-6)
    wide = np.array([[-500.0, 1500.0], [500.0, 0.0]], np.float32)  # no fixed range: min-max
    np.testing.assert_allclose(load_scan(raster_bytes(Image.fromarray(wide), "TIFF")).pixels,
                               [[0, 1], [0.5, 0.25]], atol=1e-6)


def test_raster_through_a_window_set_replicates_grey():
    grey = np.array([[0, 128], [200, 255]], np.uint8)
    scan = load_scan(raster_bytes(Image.fromarray(grey), "PNG"), window="rsna3")
    assert scan.image.shape == (2, 2, 3) and scan.window is None
    for k in range(3):
        np.testing.assert_array_equal(scan.image[..., k], grey)


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.0, 0.5 / 255, 0.2, 1.0, 3.0])),
                                  [0, 0, 0, 51, 255, 255])


def test_real_kaggle_png_becomes_grey(shared_data):
    path = shared_data / "head_ct_kaggle" / "head_ct" / "000.png"
    with Image.open(path) as raw:
        assert raw.mode in ("RGB", "RGBA")
        width, height = raw.size
    scan = load_scan(path)
    assert scan.pixels.shape == scan.image.shape == (height, width)
    assert 0.0 <= scan.pixels.min() < scan.pixels.max() <= 1.0 and scan.modality == "raster"


def test_max_side_area_averages_while_decoding_and_keeps_small_slices_exact():
    import tracemalloc
    left_dark = np.zeros((2000, 3000), np.uint8)
    left_dark[:, 1500:] = 200
    for data in (raster_bytes(Image.fromarray(left_dark), "PNG"), raster_bytes(Image.fromarray(left_dark), "JPEG"),
                 raster_bytes(Image.fromarray(left_dark).convert("P"), "PNG")):
        tracemalloc.start()
        scan = load_scan(data, max_side=300)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert scan.image.shape == (200, 300) and scan.stored_shape == (2000, 3000), "aspect ratio kept"
        assert peak < left_dark.size * 4 / 4, "no float copy at the stored size"
        assert abs(int(scan.image[100, 10]) - 0) <= 3 and abs(int(scan.image[100, 290]) - 200) <= 3
    small = raster_bytes(Image.fromarray(left_dark[:200, 1400:1700]), "PNG")
    assert np.array_equal(load_scan(small, max_side=300).pixels, load_scan(small).pixels), "within max_side: untouched"
    stored = np.tile(STORED, (500, 250))   # 2000 x 1000, spacing 0.5 x 0.75 mm
    scan = load_scan(make_dicom(stored), max_side=300)   # 7 x 7 blocks: 285 x 142
    assert scan.image.shape == (285, 142) and scan.stored_shape == (2000, 1000)
    assert scan.pixel_spacing == pytest.approx((3.5, 5.25))
    assert scan.pixels.mean() == pytest.approx(load_scan(make_dicom(stored)).pixels[:1995, :994].mean(), rel=1e-4)
