"""What every new DICOM object of a case shares (encapsulated PDF, key images): the patient and study of the
input series, a new series in that study, the AI marking (contributing equipment, algorithm) and the source
references. Sources are the cleaned headers of io.dicom_seg.prepare_sources (de-identified series included).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.io.dicom_seg import clean_text

# copied from the input series (type 2 where the IODs need them: empty when the input has none)
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")
NOT_CLINICAL = "research, not for clinical use"
# series numbers of our objects: the input series' number plus an offset (SEG +1000, SR +3000, see io/)
SERIES_OFFSET = {"pdf": 4000, "key-images": 5000}


def series_number(first: Any, kind: str) -> int:
    """The new series' number: the input's (0 if none) + this kind's offset (modulo 100000 first)."""
    try:
        number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    return (number % 100000) + SERIES_OFFSET[kind]


def base_dataset(first: Any, sop_class: str, modality: str, kind: str, description: str,
                 model_name: str, model_version: str) -> Any:
    """A new instance in a new series of the input's study: SOP common, patient, study, series, equipment with
    the AI marking (Contributing Equipment: PancreasDiNTS as processing equipment, the model and versions)."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = hd.UID()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key in PATIENT_STUDY:
        setattr(ds, key, first.get(key, "") or "")
    now = datetime.datetime.now()
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality = modality
    ds.SeriesInstanceUID = hd.UID()
    ds.SeriesNumber = series_number(first, kind)
    ds.InstanceNumber = 1
    ds.SeriesDescription = clean_text(f"{description} ({NOT_CLINICAL})", "LO")
    ds.Manufacturer = "PancreasDiNTS"
    ds.ManufacturerModelName = clean_text(model_name, "LO") or "unknown"
    ds.SoftwareVersions = clean_text(__version__, "LO")
    ds.ContributingEquipmentSequence = [contributing_equipment(model_name, model_version)]
    return ds


def contributing_equipment(model_name: str, model_version: str) -> Any:
    """Contributing Equipment item: the AI that made the object (DCM 109102 Processing Equipment)."""
    from pydicom.dataset import Dataset

    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = "PancreasDiNTS"
    item.ManufacturerModelName = clean_text(f"PancreasDiNTS {model_name}", "LO") or "PancreasDiNTS"
    item.SoftwareVersions = clean_text(f"{__version__} / model {model_version}", "LO")
    item.ContributionDescription = clean_text(
        f"AI segmentation and measurement of pancreas and pancreatic lesion ({NOT_CLINICAL})", "ST")
    return item


def image_reference(ds: Any, purpose: tuple[str, str, str] | None = None) -> Any:
    """A Referenced SOP Class/Instance item for one source image (optionally with a purpose code)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = str(ds.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
    if purpose is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = purpose
        item.PurposeOfReferenceCodeSequence = [code]
    return item


def referenced_series(datasets: Sequence[Any]) -> Any:
    """A Referenced Series item listing every source image of the input series."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.SeriesInstanceUID = str(datasets[0].SeriesInstanceUID)
    item.ReferencedInstanceSequence = [image_reference(ds) for ds in datasets]
    return item
