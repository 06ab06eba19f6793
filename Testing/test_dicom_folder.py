"""Issue 11, observation 5 (folders): preamble-less files, several series in one folder, localizers and
non-image objects mixed in. Series cut from the real example CT (64 x 64 voxels of 3 mm, 16 slices)."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_factory import Plane, axial_planes, load_crop, new_ids, save, slice_dataset, write_series
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.io.dicom import (
    folder_cases,
    is_dicom_file,
    list_series,
    read_dicom_series,
    series_case_names,
)
from PancreasDiNTSLib.io.images import expand_inputs, read_image

N = 16


@pytest.fixture(scope="module")
def vol():
    from support import EXAMPLE_CT, require

    return load_crop(require(EXAMPLE_CT))


def test_preamble_less_files_are_read(tmp_path, vol):
    """Observation: a DICOM file without the 128-byte preamble (GDCM reads it) -> "folder holds no DICOM
    series". Half the files here have neither preamble nor file meta (implicit VR), the rest are normal."""
    folder = tmp_path / "s"
    files = write_series(folder, vol, axial_planes(vol, np.arange(N) * 3.0))
    import pydicom

    for f in files[::2]:
        save(pydicom.dcmread(str(f)), f, preamble=False)
    raw = files[0].read_bytes()
    assert raw[128:132] != b"DICM" and raw[:2] == b"\x08\x00"
    assert all(is_dicom_file(f) for f in files)
    assert expand_inputs([str(folder)]) == [folder]
    got = read_dicom_series(folder)
    np.testing.assert_array_equal(got.data, vol.data[:, :, :N])
    np.testing.assert_allclose(got.affine_ras, vol.affine_ras, atol=1e-4)
    assert read_image(folder).shape == (64, 64, N)


def test_not_dicom_files_are_not_taken_for_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("patient notes\n")
    (tmp_path / "blob.bin").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)
    (tmp_path / "short").write_bytes(b"\x08")
    assert not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path / "short")
    assert list_series(tmp_path) == []
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path)
    assert "no DICOM image series" in str(exc.value)


def test_two_series_in_one_folder(tmp_path, vol):
    """Observation: two series in one folder -> a warning that does not say which one was used. Now each
    series is listed (its own case) and read by UID; without a UID the read is refused, naming both."""
    folder = tmp_path / "s"
    a = new_ids(number=3, description="CT ABDOMEN")
    b = new_ids(number=4, description="Arterial 1.0/0.7 B30f <dual>\x07")
    write_series(folder, vol, axial_planes(vol, np.arange(N) * 3.0), ids=a, prefix="a")
    flipped = type(vol)(vol.data[::-1].copy(), vol.affine_ras.copy())
    write_series(folder, flipped, axial_planes(flipped, np.arange(N - 4) * 3.0), ids=b, prefix="b")
    series = list_series(folder)
    assert [(s.uid, s.number, len(s.files)) for s in series] == [(a.series, 3, N), (b.series, 4, N - 4)]
    names = series_case_names(series)
    assert names == ["3-CT_ABDOMEN", "4-Arterial_1.0_0.7_B30f_dual"]
    assert folder_cases(folder) == list(zip(names, series, strict=True))
    assert series[0].fingerprint() != series[1].fingerprint()
    assert series[0].fingerprint() == list_series(folder)[0].fingerprint()
    assert all(n and not n.startswith(".") and "/" not in n for n in names)
    got_a = read_dicom_series(folder, series_uid=a.series)
    got_b = read_dicom_series(folder, series_uid=b.series)
    np.testing.assert_array_equal(got_a.data, vol.data[:, :, :N])
    np.testing.assert_array_equal(got_b.data, flipped.data[:, :, : N - 4])
    assert got_b.series.uid == b.series and "series 4" in got_b.notes[0] and b.series in got_b.notes[0]
    with pytest.raises(InputError) as exc:
        read_dicom_series(folder)
    text = str(exc.value)
    assert "\n" not in text and a.series in text and b.series in text and "--series" in text
    with pytest.raises(InputError) as exc:
        read_dicom_series(folder, series_uid="1.2.3.4")
    assert "no DICOM series with UID 1.2.3.4" in str(exc.value)
    # The engine's reader: by folder + UID, or by one file of the series.
    case = read_image(folder, series_uid=b.series)
    assert case.image.meta["dicom_series_number"] == "4" and case.shape == (64, 64, N - 4)
    one_file = sorted(folder.glob("a*.dcm"))[0]
    assert read_image(one_file).image.meta["dicom_series_uid"] == a.series
    assert read_image(sorted(folder.glob("b*.dcm"))[0]).image.meta["dicom_series_number"] == "4"


def test_localizer_and_non_image_objects_are_left_out(tmp_path, vol):
    """A localizer in the same series (another orientation and size), an SR, a SEG, a presentation state,
    a DICOMDIR-like object and a text file: only the CT slices are read."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "s"
    ids = new_ids()
    write_series(folder, vol, axial_planes(vol, np.arange(N) * 3.0), ids=ids)
    scout = Plane(vol.point((0, 32, 0)), vol.axis(0), vol.axis(2), (3.0, 3.0), (64, 48))
    ds = slice_dataset(scout.sample(vol.sitk()), scout, ids, instance=99)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    save(ds, folder / "scout.dcm")

    def other(name: str, sop_class: str, modality: str, pixels: bool = False) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        obj = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
        obj.SOPClassUID, obj.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        obj.Modality, obj.StudyInstanceUID, obj.SeriesInstanceUID = modality, ids.study, generate_uid()
        obj.SeriesNumber = 90
        if pixels:
            obj.Rows, obj.Columns, obj.NumberOfFrames = 64, 64, 2
            obj.BitsAllocated, obj.BitsStored, obj.HighBit, obj.SamplesPerPixel = 1, 1, 0, 1
            obj.PixelData = bytes(64 * 64 * 2 // 8)
        obj.save_as(str(folder / name), enforce_file_format=True)

    other("sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33", "SR")
    other("seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4", "SEG", pixels=True)
    other("pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    other("rtstruct.dcm", "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT")
    (folder / "notes.txt").write_text("not DICOM")
    series = list_series(folder)
    assert len(series) == 1 and len(series[0].files) == N
    got = read_dicom_series(folder)
    np.testing.assert_array_equal(got.data, vol.data[:, :, :N])
    note = " ".join(got.notes)
    assert "1 localizer image" in note and "non-image object (SEG)" in note and "non-image object (SR)" in note
