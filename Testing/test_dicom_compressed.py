"""Issue 11 (DICOM reading): compressed transfer syntaxes decode to the same HU as the uncompressed series.

JPEG 2000, RLE and JPEG-LS are written by pydicom (pylibjpeg-openjpeg, its own RLE encoder, pyjpegls) and
decoded by pydicom; JPEG lossless (process 14) is written by SimpleITK's GDCM and decoded through the GDCM
fallback (pydicom has no decoder for it without a GPL plugin). Series: 16 slices of the real example CT."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_factory import axial_planes, load_crop, write_series
from PancreasDiNTSLib.io.dicom import read_dicom_series

N = 16


@pytest.fixture(scope="module")
def vol():
    from support import EXAMPLE_CT, require

    return load_crop(require(EXAMPLE_CT))


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless", "JPEGLSLossless"])
def test_pydicom_compressed_series(tmp_path, vol, syntax):
    import pydicom.uid

    uid = getattr(pydicom.uid, syntax)

    def compress(ds, k):
        ds.RescaleIntercept = -1024 - k  # per-slice rescale must be applied per slice
        ds.PixelData = (np.rint(np.frombuffer(ds.PixelData, np.int16) + 0.0) + k).astype(np.int16).tobytes()
        ds.compress(uid)

    files = write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(N) * 3.0), edit=compress)
    import pydicom

    assert pydicom.dcmread(str(files[0]), stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    got = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(got.data, vol.data[:, :, :N])
    assert not any("GDCM" in n for n in got.notes)


def test_jpeg_lossless_through_gdcm(tmp_path, vol):
    import pydicom

    files = write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(N) * 3.0))
    import locale

    saved = locale.setlocale(locale.LC_ALL, None)  # GDCM's writer sets the C locale (ASCII file encoding)
    try:
        _gdcm_jpeg_lossless(files)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    got = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(got.data, vol.data[:, :, :N])
    assert any("GDCM" in n for n in got.notes) or _pydicom_decodes_jpeg_lossless()
    assert locale.setlocale(locale.LC_ALL, None) == saved  # reading through GDCM leaves the locale alone


def _gdcm_jpeg_lossless(files) -> None:
    """Rewrite each file as JPEG lossless (process 14) with SimpleITK's GDCM writer."""
    import SimpleITK as sitk

    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(f))
        img = reader.Execute()
        out = sitk.Cast(img, sitk.sitkInt16)
        for key in img.GetMetaDataKeys():
            out.SetMetaData(key, img.GetMetaData(key))
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.KeepOriginalImageUIDOn()
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.SetFileName(str(f))
        writer.Execute(out)


def _pydicom_decodes_jpeg_lossless() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    return bool(get_decoder(JPEGLosslessSV1).is_available)
