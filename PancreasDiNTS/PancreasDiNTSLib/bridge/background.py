"""Running the engine as a background process: what the Slicer modules use, with no Slicer import.

The modules never run torch in Slicer's own process. They build a command line here, start it with
``slicer.util.launchConsoleProcess``, feed every output line to :class:`ProgressParser`, and read the
results with the helpers at the end. Everything in this file is plain Python (standard library at import
time; ``psutil`` and ``torch`` only inside the functions that need them), so it imports in a fresh Slicer
before the engine's dependencies are installed, and it is tested without Slicer.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PancreasDiNTSLib.core.paths import (
    OFFICIAL_BUNDLE_NAME,
    OUTPUT_NAMES,
    demo_model_location,
    is_model_folder,
    model_cache_root,
)
from PancreasDiNTSLib.core.terminology import SEGMENTS

ENGINE_MODULE = "PancreasDiNTSLib.cli"
SEG_NRRD_NAME = OUTPUT_NAMES["seg.nrrd"]
REPORT_NAME = OUTPUT_NAMES["report"]
# The folder that holds the PancreasDiNTSLib package (the Slicer module folder, or PancreasDiNTS/ here).
ENGINE_PARENT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DEVICES = [("auto", "Automatic (GPU if available)"), ("cpu", "CPU")]
# "pancreas-dints <command>: error: <message>" is how cli.main() reports a PancreasDiNTSError.
_ENGINE_ERROR = re.compile(r"^pancreas-dints(?: [\w-]+)?: error: (?P<message>.+)$")


# ----------------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------------


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` when it is on PATH (inside Slicer), else the running interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_environment(base_pythonpath: str | None = None, engine_parent: str | Path | None = None) -> dict[str, str]:
    """Environment variables that let ``python -m PancreasDiNTSLib.cli`` import the engine shipped in a module.

    ``base_pythonpath`` is the PYTHONPATH the child would otherwise get; the engine's folder goes first.
    """
    parent = str(engine_parent or ENGINE_PARENT_DIR)
    parts = [parent] + [p for p in (base_pythonpath or "").split(os.pathsep) if p and p != parent]
    return {"PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


def _engine(python: str, command: str, *args: Any) -> list[str]:
    return [str(python), "-m", ENGINE_MODULE, command, *[str(a) for a in args]]


def _overrides(overrides: dict[str, Any] | Sequence[str] | None) -> list[str]:
    """``--set key=value`` pairs from a dict or a list of 'key=value' strings."""
    if not overrides:
        return []
    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides)
    out: list[str] = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        out += ["--set", item]
    return out


def segment_command(
    python_executable: str,
    input_path: str | Path,
    output_dir: str | Path,
    model: str | Path,
    device: str = "auto",
    formats: Sequence[str] = ("seg.nrrd",),
    allow_non_ct: bool = False,
) -> list[str]:
    """``segment`` one input into ``output_dir/<case>/`` with JSON progress (what the Segment button runs)."""
    if not formats:
        raise ValueError("at least one output format is needed")
    cmd = _engine(
        python_executable, "segment", input_path, "-o", output_dir, "--model", model, "--device", device,
        "--format", ",".join(formats), "--progress", "json", "--overwrite",
    )
    return cmd + (["--allow-non-ct"] if allow_non_ct else [])


def download_command(python_executable: str, dest: str | Path | None = None,
                     source: str | Path | None = None) -> list[str]:
    """``download`` the official model into the cache (or ``dest``), or install it from a local zip/folder.

    It prints log lines (no JSON progress); the last line is the installed folder.
    """
    cmd = _engine(python_executable, "download")
    if dest:
        cmd += ["--dest", str(dest)]
    if source:
        cmd += ["--from", str(source)]
    return cmd


def make_phantoms_command(python_executable: str, output_dir: str | Path, count: int = 3, seed: int = 0) -> list[str]:
    """``make-phantoms``: a synthetic CT data set in the MSD Task07 layout (for self-tests and demos)."""
    return _engine(python_executable, "make-phantoms", "-n", count, "-o", output_dir, "--seed", seed,
                   "--progress", "json")


def prepare_datalist_command(python_executable: str, data_dir: str | Path, datalist: str | Path,
                             train_size: float | None = None) -> list[str]:
    """``prepare-datalist``: a training/validation/testing datalist from an MSD-layout folder."""
    cmd = _engine(python_executable, "prepare-datalist", "--path", data_dir, "-o", datalist)
    return cmd + (["--train-size", str(train_size)] if train_size is not None else [])


def _run_folder_command(python_executable: str, command: str, datalist: str | Path, output_dir: str | Path,
                        preset: str, device: str, resume: bool, overrides: dict[str, Any] | Sequence[str] | None,
                        extra: Sequence[str] = ()) -> list[str]:
    """The command line of ``train`` or ``search`` (they share their run options: cli.train.add_run_arguments)."""
    cmd = _engine(python_executable, command, "--datalist", datalist, "-o", output_dir, "--preset", preset,
                  "--device", device, *extra)
    if resume:
        cmd.append("--resume")
    return cmd + _overrides(overrides) + ["--progress", "json"]


def train_command(
    python_executable: str,
    datalist: str | Path,
    output_dir: str | Path,
    arch: str | Path | None = None,
    preset: str = "tiny",
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | Sequence[str] | None = None,
) -> list[str]:
    """``train`` a model from a datalist into a run folder (a bundle ``segment`` can load)."""
    return _run_folder_command(python_executable, "train", datalist, output_dir, preset, device, resume, overrides,
                               ["--arch", str(arch)] if arch else [])


def search_command(
    python_executable: str,
    datalist: str | Path,
    output_dir: str | Path,
    preset: str = "tiny",
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | Sequence[str] | None = None,
) -> list[str]:
    """``search`` a DiNTS architecture; the result is an arch file for ``train --arch``."""
    return _run_folder_command(python_executable, "search", datalist, output_dir, preset, device, resume, overrides)


def evaluate_command(
    python_executable: str,
    model: str | Path,
    datalist: str | Path,
    output_dir: str | Path,
    split: str = "testing",
    device: str = "auto",
) -> list[str]:
    """``evaluate`` a model on one split of a datalist (Dice, HD95, volumes)."""
    return _engine(python_executable, "evaluate", "--model", model, "--datalist", datalist, "--split", split,
                   "-o", output_dir, "--device", device, "--progress", "json")


def export_command(
    python_executable: str,
    model: str | Path,
    output: str | Path | None = None,
    export_format: str = "torchscript",
    precision: str = "fp32",
) -> list[str]:
    """``export`` a model folder to TorchScript, ONNX or TensorRT."""
    cmd = _engine(python_executable, "export", "--model", model, "--format", export_format,
                  "--precision", precision)
    if output:
        cmd += ["-o", str(output)]
    return cmd


# ----------------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Event:
    """One output line of the engine, interpreted.

    ``kind`` is ``progress`` (a JSON object with a ``stage``), ``metrics`` (a JSON object without one, e.g.
    epoch/loss/Dice of training), or ``log`` (any other line: warnings, tracebacks, the final error line).
    """

    kind: str
    line: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return str(self.data.get("stage", ""))

    @property
    def fraction(self) -> float | None:
        value = self.data.get("fraction")
        return float(value) if isinstance(value, int | float) else None

    @property
    def message(self) -> str:
        return str(self.data.get("message", "")) if self.kind != "log" else self.line


class ProgressParser:
    """Turns the engine's stdout lines into :class:`Event` objects and remembers what the run told so far."""

    METRIC_KEYS = ("epoch", "epochs", "step", "loss", "dice", "val_dice", "mean_dice", "best_dice", "lr")

    def __init__(self) -> None:
        self.fraction = 0.0
        self.status = ""
        self.cases_done: list[str] = []
        self.case_errors: dict[str, str] = {}
        self.engine_error: str | None = None
        self.summary: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.log: list[str] = []

    def feed(self, line: str) -> Event:
        """Interpret one line (with or without its newline)."""
        text = line.rstrip("\r\n")
        data = _json_object(text)
        if data is None:
            self.log.append(text)
            match = _ENGINE_ERROR.match(text.strip())
            if match:
                self.engine_error = match.group("message").strip()
            return Event("log", text)
        if "stage" not in data:
            self._keep_metrics(data)
            return Event("metrics", text, data)
        event = Event("progress", text, data)
        if event.fraction is not None:
            self.fraction = max(0.0, min(1.0, event.fraction))
        case = str(data.get("case", ""))
        stage = event.stage
        if stage == "error":
            self.case_errors[case] = event.message
        elif stage == "done" and case and case not in self.cases_done:
            self.cases_done.append(case)
            if data.get("output_dir"):
                self.outputs[case] = str(data["output_dir"])
        elif stage == "summary":
            self.summary = data
        self._keep_metrics(data)
        if stage == "epoch" and "epoch" in data:
            loss = data.get("loss")
            self.status = f"epoch {data['epoch']}/{data.get('epochs', '?')}" + (
                f", loss {loss:.4f}" if isinstance(loss, int | float) else "")
        else:
            text = event.message or stage
            self.status = f"{case}: {text}" if case and case != stage else text
        return event

    def _keep_metrics(self, data: dict[str, Any]) -> None:
        """Remember training numbers (a null Dice between validations keeps the last known value)."""
        self.metrics.update({k: v for k, v in data.items()
                             if (k in self.METRIC_KEYS or "dice" in k) and v is not None})

    def feed_all(self, lines: Iterable[str]) -> list[Event]:
        """A finished process's whole output at once (kept for scripts and the scene-layer tests)."""
        return [self.feed(line) for line in lines]

    def error_message(self, returncode: int | None = None) -> str:
        """The one-line reason a run failed: the engine's own message when it printed one."""
        if self.engine_error:
            return self.engine_error
        if self.case_errors:
            return "; ".join(f"{case}: {msg}" if case else msg for case, msg in self.case_errors.items())
        tail = [line for line in self.log if line.strip()]
        if tail:
            return tail[-1].strip()
        return f"the engine stopped with exit code {returncode}" if returncode is not None else "unknown error"


def _json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def training_display(metrics: dict[str, Any]) -> dict[str, str]:
    """Texts for epoch, loss and validation Dice from :attr:`ProgressParser.metrics` ('-' when unknown)."""
    epoch, epochs, loss = metrics.get("epoch"), metrics.get("epochs"), metrics.get("loss")
    dice = next((metrics[k] for k in ("val_dice", "mean_dice", "dice", "best_val_mean_dice")
                 if metrics.get(k) is not None), None)
    return {
        "epoch": "-" if epoch is None else (f"{epoch}/{epochs}" if epochs else str(epoch)),
        "loss": "-" if not isinstance(loss, int | float) else f"{loss:.4f}",
        "dice": "-" if not isinstance(dice, int | float) else f"{dice:.3f}",
    }


def output_lines(stream: IO[str]) -> Iterator[str]:
    """The lines of a process's text output until its end; an undecodable line is replaced, never the end.

    A pipe opened in text mode decodes with the locale's encoding and raises on bytes it cannot decode, which
    would stop a reader for good. The engine writes UTF-8 (``PYTHONIOENCODING``), so when the stream has a
    binary buffer the lines are read from it and decoded as UTF-8 with replacement characters."""
    raw = getattr(stream, "buffer", None)
    if raw is not None:
        for data in iter(raw.readline, b""):
            yield data.decode("utf-8", errors="replace")
        return
    while True:
        try:
            line = stream.readline()
        except UnicodeDecodeError:
            continue  # skip the line that cannot be decoded, keep reading
        if not line:
            return
        yield line


class LinePump:
    """Reads a process's stdout on a thread into a queue, so a GUI timer can poll it without blocking.

    Used on Slicer releases whose ``launchConsoleProcess`` has no non-blocking mode (before 5.12).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in output_lines(stream):
                self._queue.put(line)
        except (ValueError, OSError):  # stream closed: stop reading
            pass
        finally:
            self._queue.put(None)

    def drain(self) -> list[str]:
        """Every line read since the last call (never blocks)."""
        lines: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if item is None:
                self._ended = True
            else:
                lines.append(item)

    @property
    def ended(self) -> bool:
        """True once the stream reached its end and every line was drained."""
        return self._ended and self._queue.empty()


def follow(proc: subprocess.Popen, on_line: Callable[[str], Any]) -> int:
    """Blocking: pass each output line of ``proc`` to ``on_line`` until it exits; return its exit code."""
    assert proc.stdout is not None
    for line in output_lines(proc.stdout):
        on_line(line)
    return proc.wait()


def kill_process_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """Kill a process and all its descendants (children first), by process id only; return the killed ids.

    ``proc.kill()`` alone would stop only the launcher (``PythonSlicer`` starts the real interpreter as a
    child), leaving the computation running.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    killed = []
    for proc in [*reversed(children), root]:  # deepest descendants first, the root last
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([*children, root], timeout=timeout)
    return killed


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


def case_folders(output_dir: str | Path) -> list[Path]:
    """Case folders of a ``segment`` output folder (those holding a result file), sorted by name."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (
        (p / SEG_NRRD_NAME).is_file() or (p / REPORT_NAME).is_file()))


def case_folder(output_dir: str | Path, case: str | None = None) -> Path:
    """The folder of ``case``, or the only case folder when ``case`` is None."""
    folders = case_folders(output_dir)
    if case is not None:
        for folder in folders:
            if folder.name == case:
                return folder
        raise FileNotFoundError(f"{output_dir}: no results for case {case!r}")
    if len(folders) != 1:
        raise FileNotFoundError(f"{output_dir}: expected one case folder with results, found {len(folders)}")
    return folders[0]


def seg_nrrd_path(folder: str | Path) -> Path:
    """The Slicer segmentation file of a case folder."""
    path = Path(folder) / SEG_NRRD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the engine wrote no segmentation file")
    return path


def read_report(folder: str | Path) -> dict[str, Any]:
    """The case's ``report.json`` as a dict ({} when absent)."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def volumes_ml(report: dict[str, Any]) -> dict[str, float]:
    """Segment name -> volume in mL, from a report dict.

    Accepts ``segments`` as a list of ``{"name", "volume_ml"}`` objects or a ``{name: {"volume_ml"}}`` map,
    or a flat ``volumes_ml`` map.
    """
    out: dict[str, float] = {}
    segments = report.get("segments")
    if isinstance(segments, dict):
        segments = [{"name": name, **(info if isinstance(info, dict) else {"volume_ml": info})}
                    for name, info in segments.items()]
    for item in segments or []:
        if isinstance(item, dict) and "name" in item:
            value = item.get("volume_ml", item.get("volume_mL"))
            if isinstance(value, int | float):
                out[str(item["name"])] = float(value)
    flat = report.get("volumes_ml")
    if isinstance(flat, dict):
        out.update({str(k): float(v) for k, v in flat.items() if isinstance(v, int | float)})
    return out


def format_volumes(volumes: dict[str, float]) -> str:
    """'Pancreas: 72.4 mL, Pancreatic tumor: 3.1 mL' in the engine's segment order."""
    names = [s.name for s in SEGMENTS if s.name in volumes] + [n for n in volumes if n not in
                                                                {s.name for s in SEGMENTS}]
    return ", ".join(f"{name}: {volumes[name]:.1f} mL" for name in names)


# ----------------------------------------------------------------------------------------------------------
# Devices and dependencies
# ----------------------------------------------------------------------------------------------------------


model_cache_folder = model_cache_root  # the bridge's name for it


def official_model_folder(cache: str | Path | None = None) -> Path | None:
    """The newest official model installed by `download` (<cache>/pancreas_ct_dints_segmentation/<version>), or
    None. Local models installed with `download --from ... --name` (<cache>/local/<name>) are not official."""
    root = (Path(cache) if cache else model_cache_folder()) / OFFICIAL_BUNDLE_NAME
    found = [p for p in root.iterdir() if is_model_folder(p)] if root.is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def demo_model_folder() -> Path | None:
    """The demo model (trained on phantoms): $PANCREAS_DINTS_DEMO_MODEL, else the one shipped inside the engine
    package (core.paths, as PancreasDiNTSLib.synthetic.demo.demo_model_dir, which imports torch), or None."""
    path, _ = demo_model_location()
    return path if is_model_folder(path) else None


def engine_has_command(name: str) -> bool:
    """Whether this engine has the CLI sub-command ``name`` (without importing it)."""
    import importlib.util

    module = name.replace("-", "_")
    return (ENGINE_PARENT_DIR / "PancreasDiNTSLib" / "cli" / f"{module}.py").is_file() or bool(
        importlib.util.find_spec(f"PancreasDiNTSLib.cli.{module}"))


def find_arch_file(folder: str | Path, summary: dict[str, Any] | None = None) -> Path | None:
    """The architecture a search produced: its summary's ``arch_file`` when given, else the newest
    ``search_code*.pt``/``arch*.pt`` directly in the folder, else the newest one below it; None if there is none."""
    if summary and summary.get("arch_file") and Path(summary["arch_file"]).is_file():
        return Path(summary["arch_file"])
    root = Path(folder)
    if not root.is_dir():
        return None
    for search in (root.glob, root.rglob):
        found = [p for pattern in ("search_code*.pt", "arch*.pt") for p in search(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
    return None


def list_devices() -> list[tuple[str, str]]:
    """(device, label) pairs: ``auto``, ``cpu`` and one ``cuda:N`` per visible GPU (named via torch if present)."""
    devices = list(DEFAULT_DEVICES)
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append((f"cuda:{i}", f"GPU {i}: {props.name} ({props.total_memory / 2**30:.0f} GiB)"))
    return devices


def devices_command(python_executable: str) -> list[str]:
    """A command that prints :func:`list_devices` as JSON (run outside Slicer's process)."""
    return [str(python_executable), "-m", "PancreasDiNTSLib.bridge.background", "devices"]


def parse_devices(output: str) -> list[tuple[str, str]]:
    """Read the output of :func:`devices_command` (the last JSON list line); falls back to auto/cpu."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("["):
            try:
                return [(str(d), str(label)) for d, label in json.loads(line)]
            except (ValueError, TypeError):
                break
    return list(DEFAULT_DEVICES)


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blanks dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied by installed distributions (name absent or version outside the spec)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def requirement_installed(requirement: str) -> bool:
    """True when some version of the requirement's distribution is installed (an upgrade may need a restart)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        metadata.version(Requirement(requirement).name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m PancreasDiNTSLib.bridge.background devices``: print the device list as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["devices"]:
        print("usage: python -m PancreasDiNTSLib.bridge.background devices", file=sys.stderr)
        return 2
    print(json.dumps(list_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
