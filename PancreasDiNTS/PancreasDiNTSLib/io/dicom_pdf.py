"""The case report page (report.pdf) as a DICOM Encapsulated PDF in the input's study (``--format dicom-pdf``).

A new series (Modality DOC) of the input series' study; the PDF's bytes are embedded unchanged (an odd length
gets one pad byte, and Encapsulated Document Length says the true length), so a reader that extracts the
document (dcmtk's ``dcm2pdf``) gives back report.pdf byte for byte. Document Title: the page's own title; Source
Instance Sequence: every CT image of the series; Contributing Equipment: the AI that made it; Burned In
Annotation YES (the page names the input). The page itself carries the not-for-clinical-use line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import InputError, first_line
from PancreasDiNTSLib.io.dicom_derived import base_dataset, image_reference
from PancreasDiNTSLib.io.dicom_seg import clean_text, encode, prepare_sources

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MAX_PDF_BYTES = 1 << 30


class DicomPdfError(InputError):
    """No encapsulated PDF can be made for this case (one line; the other outputs are unaffected)."""


def build(sources: Sequence[Any], pdf: bytes, title: str, model_name: str, model_version: str) -> Any:
    """The Encapsulated PDF dataset of ``pdf`` in the study of ``sources`` (cleaned CT headers, slice order)."""
    if not pdf.startswith(b"%PDF-"):
        raise DicomPdfError("the report page is not a PDF")
    if len(pdf) > MAX_PDF_BYTES:
        raise DicomPdfError(f"the report page is {len(pdf)} bytes; an encapsulated PDF holds at most 1 GiB")
    first = sources[0]
    ds = base_dataset(first, ENCAPSULATED_PDF, "DOC", "pdf", "Pancreas DiNTS case report", model_name,
                      model_version)
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = clean_text(title, "ST")
    ds.ConceptNameCodeSequence = []
    ds.SourceInstanceSequence = [image_reference(s) for s in sources]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds


def write(dest: Path, pdf_path: Path, files: Sequence[Path], title: str, model_name: str,
          model_version: str) -> list[str]:
    """Write the encapsulated PDF of the page at ``pdf_path`` into the study of the series ``files``."""
    sources = prepare_sources(files)
    try:
        pdf = Path(pdf_path).read_bytes()
    except OSError as exc:
        raise DicomPdfError(f"{pdf_path}: the report page cannot be read ({exc.strerror or exc})") from None
    data = encode(build(sources.datasets, pdf, title, model_name, model_version))
    with atomic_path(Path(dest)) as tmp:
        Path(tmp).write_bytes(data)
    return sources.notes


def check_preconditions(files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Before inference: an encapsulated PDF of a one-page stand-in document in this series' study, in memory."""
    sources = prepare_sources(files)
    try:
        encode(build(sources.datasets, b"%PDF-1.4\n%%EOF\n", "trial", model_name, model_version))
    except DicomPdfError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; the user gets one line
        raise DicomPdfError(f"{sources.files[0].parent}: a DICOM encapsulated PDF cannot be made for this series "
                            f"({first_line(exc)}); leave dicom-pdf out of --format"
                            ) from None
    return sources.notes
