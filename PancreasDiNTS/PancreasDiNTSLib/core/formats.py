"""The output formats of ``segment``: one registry (name -> file, DICOM needs, extra package, description).

Torch-free, so the CLI's help, the server, the Slicer panel, the docs table and the engine all read the same
entries. The engine attaches each format's writer (``inference.pipeline.OUTPUTS``: writer, size estimate and
precondition per name); a test checks that every format here has one. Adding a format: one :class:`OutputFormat`
in :data:`FORMATS` below and its writer in ``inference/pipeline.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from PancreasDiNTSLib.core.errors import UsageError, printable


@dataclass(frozen=True)
class OutputFormat:
    """One ``--format`` value."""

    name: str  # what --format, the server's ``formats`` and report.json's "outputs" call it
    filename: str  # the file in OUTDIR/<case>/
    description: str  # one line for the docs and the panel
    dicom_only: bool = False  # written for DICOM inputs only (otherwise a note)
    refuse_non_dicom: bool = False  # dicom_only, but a non-DICOM input is refused (exit 2) instead of a note
    whole_image: bool = False  # needs the whole image's probabilities: not with a --roi box (a note)
    requires: tuple[str, ...] = ()  # formats it needs written before it (parse_formats adds them)
    title: str = ""  # how notes name it (default: the name)
    package: str = ""  # the extra Python package its writer needs ("" none beyond the engine's own)
    aliases: tuple[str, ...] = ()  # other spellings --format accepts

    @property
    def label(self) -> str:
        return self.title or self.name


FORMATS: dict[str, OutputFormat] = {f.name: f for f in (
    OutputFormat("nifti", "labels.nii.gz", "label map (0 background, 1 pancreas, 2 lesion) on the input's grid",
                 aliases=("nii", "nii.gz")),
    OutputFormat("seg.nrrd", "segmentation.seg.nrrd", "Slicer segmentation with the two segments and their colours",
                 aliases=("seg",)),
    OutputFormat("dicom-seg", "segmentation.dcm", "DICOM SEG referencing the input series (DICOM inputs)",
                 dicom_only=True, title="DICOM SEG", package="highdicom", aliases=("dicomseg", "dcm")),
    OutputFormat("dicom-sr", "measurements-sr.dcm", "DICOM TID 1500 SR of the read-out (DICOM inputs; writes the "
                 "SEG too)", dicom_only=True, refuse_non_dicom=True, requires=("dicom-seg",), title="DICOM SR",
                 package="highdicom", aliases=("dicomsr", "sr")),
    OutputFormat("rtstruct", "rtstruct.dcm", "DICOM RT structure set (DICOM inputs)", dicom_only=True,
                 refuse_non_dicom=True, title="RTSTRUCT", package="highdicom", aliases=("rtss",)),
    OutputFormat("confidence", "confidence.nii.gz", "confidence map (255 x the highest class probability)",
                 whole_image=True),
    OutputFormat("report-png", "report.png", "one-page case report (PNG)", title="report page",
                 package="matplotlib"),
    OutputFormat("report-pdf", "report.pdf", "one-page case report (PDF)", title="report page (PDF)",
                 package="matplotlib"),
    OutputFormat("dicom-pdf", "report-pdf.dcm", "the report page as a DICOM encapsulated PDF in the input's study "
                 "(DICOM inputs; writes report-pdf too)", dicom_only=True, refuse_non_dicom=True,
                 requires=("report-pdf",), title="DICOM encapsulated PDF", package="pydicom"),
    OutputFormat("key-images", "key-images.dcm", "DICOM key images: one frame per lesion with its outline and "
                 "diameters burned in (DICOM inputs)", dicom_only=True, refuse_non_dicom=True,
                 title="DICOM key images", package="Pillow"),
    OutputFormat("fhir", "fhir-bundle.json", "FHIR R4 Bundle of the read-out (DiagnosticReport and Observations)",
                 title="FHIR Bundle"),
)}
REPORT_FILE = "report.json"  # always written (not a format)
DEFAULT_FORMATS = ("nifti", "seg.nrrd")
ALIASES = {alias: f.name for f in FORMATS.values() for alias in f.aliases}


def output_names() -> dict[str, str]:
    """Format name -> file name, and "report" -> report.json (core.paths.OUTPUT_NAMES)."""
    return {name: f.filename for name, f in FORMATS.items()} | {"report": REPORT_FILE}


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"nifti,seg.nrrd"`` -> ("nifti", "seg.nrrd") with aliases resolved and required formats added first;
    UsageError (exit 2) for an unknown format or none."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        item = ALIASES.get(item, item)
        if item not in FORMATS:
            raise UsageError(f"--format {printable(item)}: unknown output format; choose from {', '.join(FORMATS)}")
        for need in (*FORMATS[item].requires, item):  # e.g. dicom-sr references the DICOM SEG it writes too
            if need not in out:
                out.append(need)
    if not out:
        raise UsageError("--format: give at least one of " + ", ".join(FORMATS))
    return tuple(out)


def format_help() -> str:
    """``--format``'s help, from the registry (a new format needs no edit here)."""
    noted = [f.name for f in FORMATS.values() if f.dicom_only and not f.refuse_non_dicom]
    refused = [f.name for f in FORMATS.values() if f.refuse_non_dicom]
    extra = [f"{f.name} also writes {', '.join(f.requires)}" for f in FORMATS.values() if f.requires]
    return (f"comma-separated outputs from {', '.join(FORMATS)}. For DICOM inputs only: {', '.join(noted)} (a note "
            f"for other inputs); {', '.join(refused)} (other inputs refused). {'; '.join(extra)}. Default "
            f"{','.join(DEFAULT_FORMATS)}")


def markdown_table() -> str:
    """The docs' table of formats (docs/CLI.md holds a copy; a test keeps them equal)."""
    rows = ["| format | file | what | needs |", "|---|---|---|---|"]
    for f in FORMATS.values():
        needs = ", ".join(x for x in ("DICOM input" if f.dicom_only else "", f.package) if x) or "-"
        rows.append(f"| `{f.name}` | `{f.filename}` | {f.description} | {needs} |")
    return "\n".join(rows)
