"""PancreasDiNTSSceneLib: everything the Slicer modules do with MRML, without Qt.

Three layers: the module widgets (PancreasDiNTS.py, PancreasDiNTSTrain.py: Qt, parameter node, buttons) call
this scene layer (volume node -> engine input file, engine outputs -> segmentation/volume/table/markups nodes),
and the engine runs in a background process started through ``PancreasDiNTSLib.bridge``.

Every function takes a ``scene`` argument (default ``slicer.mrmlScene``) and uses only MRML and module-logic
classes that also exist in PyPI's ``slicer-core`` (Slicer's MRML without the application), so the whole layer is
tested with the real Slicer classes outside the desktop application (Testing/test_scene_*.py).
"""

from PancreasDiNTSSceneLib.common import SceneLayerError, resolve_scene
from PancreasDiNTSSceneLib.followup import CompareJob, compare_rows, compare_table
from PancreasDiNTSSceneLib.report import (
    add_line,
    readout_lines,
    readout_rows,
    readout_table,
    report_rows,
    report_table,
    show_readout,
)
from PancreasDiNTSSceneLib.roi import roi_argument, roi_box_ras
from PancreasDiNTSSceneLib.runs import RemoteSegmentationJob, SegmentationJob, SegmentationResult
from PancreasDiNTSSceneLib.segmentations import (
    import_segmentation,
    our_segment_ids,
    set_show_3d,
    terminology_codes,
)
from PancreasDiNTSSceneLib.volumes import (
    CONFIDENCE_COLOR_NODE_NAME,
    load_confidence_volume,
    show_confidence,
    write_engine_input,
)

__all__ = [
    "CONFIDENCE_COLOR_NODE_NAME",
    "CompareJob",
    "RemoteSegmentationJob",
    "SceneLayerError",
    "SegmentationJob",
    "SegmentationResult",
    "add_line",
    "compare_rows",
    "compare_table",
    "import_segmentation",
    "load_confidence_volume",
    "readout_lines",
    "readout_rows",
    "readout_table",
    "our_segment_ids",
    "report_rows",
    "report_table",
    "resolve_scene",
    "roi_argument",
    "roi_box_ras",
    "set_show_3d",
    "show_readout",
    "show_confidence",
    "terminology_codes",
    "write_engine_input",
]
