"""core.request (one description of a `segment` run) and core.formats (the output format registry): the CLI's
parser is built from the request's options, and every translation (argparse, engine command line, server job
query, Slicer parameter node) reads back the request it was made from."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PancreasDiNTSLib.cli import build_parser
from PancreasDiNTSLib.core import formats as F
from PancreasDiNTSLib.core import request as R
from PancreasDiNTSLib.core.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def segment_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["segment"]


def test_the_cli_options_are_the_request_fields():
    """Adding an option to the request adds it to `segment --help` (and nothing else does)."""
    parser = segment_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == {o.dest for o in R.OPTIONS}
    assert {o.target for o in R.OPTIONS} == set(R.request_fields())
    for option in R.OPTIONS:
        action = next(a for a in parser._actions if a.dest == option.dest)
        assert tuple(action.option_strings) == option.flags and action.help == option.help.replace("%", "%%")
        assert action.default == option.default or option.kind == "many"
        assert tuple(action.choices or ()) == tuple(option.choices or ())


def test_help_renders_every_option():
    """argparse expands % in help texts: a literal one (e.g. "99.9 %") must not break `segment --help`."""
    text = segment_parser().format_help()
    assert all(flag in text for o in R.OPTIONS for flag in o.flags)


def test_help_lists_every_format_from_the_registry():
    assert R.OPTION["formats"].help.count(", ") >= len(F.FORMATS) - 1
    for name in F.FORMATS:
        assert name in R.OPTION["formats"].help


BOX = R.Region("box", R.RoiRequest((-10.5, 0, 3, 20, 40.25, 60), "voxel", "local"))
REQUESTS = [
    R.SegmentRequest(("a.nii.gz",), Path("out")),
    R.SegmentRequest(("a.nii.gz", "dicom dir"), Path("out"), "model dir", device="cuda:1",
                     formats=("dicom-sr", "confidence"), progress="json", overwrite=True, allow_non_ct=True,
                     sw_batch_size=3, mode="fastmm", engine="compile", region=BOX, series="1.2.3", prefetch=False,
                     server="https://h:1", token_file="t"),
    R.SegmentRequest(("a.nii.gz",), Path("out"), mode="exact", region=R.Region("whole")),
    R.SegmentRequest(("a.nii.gz",), Path("out"), region=R.Region("auto")),
    R.SegmentRequest(("a.nii.gz",), Path("out"), precision="bf16"),
    R.SegmentRequest(("a.nii.gz",), Path("out"), mode="exact", precision="fp32"),
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_translations_read_back_the_request(request_):
    """argparse (through the engine's command line), flags and the server's query give the same request."""
    args = build_parser().parse_args(["segment", *request_.to_argv()])
    assert R.SegmentRequest.from_namespace(args) == request_
    assert R.SegmentRequest.from_flags(request_.flags()) == request_
    query = request_.to_query()
    assert all(isinstance(v, str) for v in query.values())
    back = R.SegmentRequest.from_query(query, inputs=request_.inputs, out_dir=request_.out_dir)
    job = {o.target for o in R.OPTIONS if o.job}
    assert {k: getattr(back, k) for k in job} == {k: getattr(request_, k) for k in job}


def test_defaults_are_left_out_of_the_command_line():
    assert REQUESTS[0].to_argv() == ["a.nii.gz", "-o", "out", "--model", "official"]
    argv = REQUESTS[1].to_argv()
    assert "--roi=-10.5,0.0,3.0,20.0,40.25,60.0" in argv  # a box starting with "-" is one word
    assert argv[argv.index("--format") + 1] == "dicom-seg,dicom-sr,confidence"  # the SR's SEG added


@pytest.mark.parametrize(("flags", "message"), [
    ({"mode": "turbo"}, "--mode turbo: choose one of fast, exact, fastmm"),
    ({"engine": "jit"}, "--engine jit: choose one of eager, cuda-graph, compile"),
    ({"sw_batch_size": 0}, "--sw-batch-size 0: give a whole number of windows"),
    ({"region": "half"}, "--region half: choose auto or whole"),
    ({"region": "auto", "roi": "0,0,0,1,1,1"}, "--region auto and --roi: choose one"),
    ({"roi": "0,0,0,1,1"}, "--roi 0,0,0,1,1: give six finite numbers"),
    ({"roi": "0,0,0,1,0,1"}, "zero size along Y"),
    ({"formats": "nifti,png"}, "--format png: unknown output format"),
    ({"precision": "fp16"}, "--precision fp16: choose one of auto, fp32, bf16"),
    ({"precision": "bf16", "mode": "exact"}, "--precision bf16 with --mode exact"),
])
def test_validate_gives_the_one_line_errors(flags, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        R.SegmentRequest.from_flags({"inputs": ("a",), "output": "o"} | flags)


def test_the_query_names_its_parameter_not_the_flag():
    with pytest.raises(UsageError, match=r"^formats png: unknown"):
        R.SegmentRequest.from_query({"formats": "png"}, inputs=(), out_dir=Path("."))
    with pytest.raises(UsageError, match=r"^mode turbo"):
        R.SegmentRequest.from_query({"mode": "turbo"}, inputs=(), out_dir=Path("."))


def test_region_is_one_decision():
    assert R.Region().resolved("cpu") == "auto" and R.Region().resolved("cuda") == "whole"
    assert R.Region("whole").resolved("cpu") == "whole" and BOX.resolved("cuda") == "box"
    assert BOX.report() == {"mode": "box"} and R.Region("whole").report() == {"mode": "whole"}
    assert R.Region.from_flags(**BOX.flags()) == BOX
    with pytest.raises(UsageError):
        R.Region("box")  # a box region without its box


def test_parameter_node_values_are_keys_and_old_scenes_still_read(tmp_path):
    """The Slicer panel stores keys; scenes saved before stored the display text (both read)."""
    for key, text in R.PANEL_REGIONS.items():
        assert R.panel_region(key) == key and R.panel_region(text) == key
    with pytest.raises(UsageError):
        R.panel_region("everything")
    old = {"region": "whole CT", "roiMode": "grid", "mode": "exact", "device": "cpu", "allowNonCT": True,
           "computeConfidence": True}
    request_ = R.from_parameters(old, ("in.nrrd",), tmp_path, "m")
    assert request_.region == R.Region("whole") and request_.mode == "exact" and request_.allow_non_ct
    assert request_.precision == "auto"  # a scene saved before the panel had a precision: the default
    old["precision"] = "auto"
    assert R.from_parameters({"precision": "fp32"}, ("in.nrrd",), tmp_path, "m").precision == "fp32"
    with pytest.raises(UsageError, match="--precision fp16"):
        R.from_parameters({"precision": "fp16"}, ("in.nrrd",), tmp_path, "m")
    assert request_.formats == ("seg.nrrd", "confidence") and request_.progress == "json" and request_.overwrite
    assert request_.to_parameters() == old | {"region": "whole"}
    box = R.from_parameters({"region": "ROI node", "roiMode": "local"}, ("in.nrrd",), tmp_path, "m",
                            roi_box=(0, 0, 0, 5, 5, 5))
    assert box.region.box == R.RoiRequest((0, 0, 0, 5, 5, 5), "ras", "local") and box.formats == ("seg.nrrd",)
    assert box.to_parameters()["region"] == "box"
    with pytest.raises(UsageError, match="select the ROI node"):
        R.from_parameters({"region": "box"}, ("in.nrrd",), tmp_path, "m")
    with pytest.raises(UsageError):
        R.from_parameters({"mode": "fastmm"}, ("in.nrrd",), tmp_path, "m")  # not a panel choice


def test_format_registry():
    assert F.parse_formats("NII, sr ,rtss") == ("nifti", "dicom-seg", "dicom-sr", "rtstruct")
    assert F.output_names()["report"] == "report.json"
    assert len({f.filename for f in F.FORMATS.values()}) == len(F.FORMATS)
    assert all(alias not in F.FORMATS for alias in F.ALIASES)
    assert all(need in F.FORMATS for f in F.FORMATS.values() for need in f.requires)
    with pytest.raises(UsageError):
        F.parse_formats(" , ")


def test_every_format_has_a_writer_and_the_docs_table():
    from PancreasDiNTSLib.inference.pipeline import OUTPUTS

    assert list(OUTPUTS) == list(F.FORMATS)
    assert all(OUTPUTS[name].format is F.FORMATS[name] for name in F.FORMATS)
    assert F.markdown_table() in (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")


def test_settings_are_a_request_with_a_rank():
    from PancreasDiNTSLib.inference.batch import SegmentSettings

    settings = SegmentSettings.of(REQUESTS[1], rank=1, world_size=2)
    assert isinstance(settings, R.SegmentRequest) and settings.rank == 1
    assert replace(settings, rank=0).mode == "fastmm"
    with pytest.raises(UsageError, match="RANK"):
        SegmentSettings.of(REQUESTS[0], rank=2, world_size=2)


def test_server_docs_name_every_job_option():
    """SERVER.md's POST /v1/jobs line lists the query parameters a job takes: the request's job options."""
    line = next(x for x in (ROOT / "docs" / "SERVER.md").read_text(encoding="utf-8").splitlines()
                if "POST /v1/jobs?" in x)
    named = set(re.findall(r"[?&](\w+)=", line)) - {"kind"}
    assert named == {o.dest for o in R.OPTIONS if o.job}
