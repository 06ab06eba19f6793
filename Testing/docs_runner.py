"""Docs as tests: the shell command blocks of the user docs, found and run as a user would copy them.

A command block is a fenced block whose info string is ``bash``, ``sh``, ``shell`` or ``console`` in README.md or
docs/*.md. Each one runs unless an HTML comment right above its fence (blank lines and other markers between are
allowed) says otherwise:

    <!-- docs-test: skip REASON -->      not run here (a GPU, TensorRT, the internet, Slicer); listed with REASON
    <!-- docs-test: synopsis -->         a command's synopsis ([options] and placeholders): not run; test_cli_docs
                                         compares it with the command's parser
    <!-- docs-test: expect PATH ... -->  files or folders the block must leave behind (besides each -o/--output)

Each run happens in a fresh folder holding the fixtures below, with HOME pointing into it; the substitutions are
listed in Testing/README.md (one table; keep it in step with SUBSTITUTIONS here). Run by Testing/test_docs.py;
``python Testing/docs_runner.py`` lists every block and what happens to it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"<!--\s*docs-test:\s*(\w[\w-]*)\s*(.*?)\s*-->")
MARKER_KINDS = ("skip", "synopsis", "expect")
# A line that only sets a shell variable: NAME=word, NAME="...", NAME='...' or NAME=$(...), then maybe a comment.
ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=(\$\([^)]*\)|\"[^\"]*\"|'[^']*'|[^\s;&|]*)\s*(#.*)?")
# Long-running commands: started in the background on a free port, stopped (Ctrl-C) when the block ends.
SERVERS = {"serve": 8765, "review": 8080}
# The documented substitutions (Testing/README.md shows this table; test_docs checks that it does).
SUBSTITUTIONS = {
    "`official`": "the packaged demo model, installed as the official bundle in the folder's model cache",
    "`pancreas-dints download` (no `--from`)": "not run: it needs the internet; `official` is already in place",
    "`pip install ...`": "not run: the test environment already holds every extra",
    "`ct.nii.gz`, `cts/`, `dicom_series/`": "tiny synthetic phantoms (NIfTI, a folder of two, one DICOM series)",
    "`pancreas-dints serve`, `review`": "started in the background on 127.0.0.1 and a free port (its default port "
                                        "in later commands becomes that port), stopped with Ctrl-C at the end",
    "`~`": "HOME is a folder inside the block's folder",
}


@dataclass
class Block:
    """One fenced shell block of a Markdown page."""

    doc: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if "synopsis" in self.markers:
            return "a synopsis (checked against the parser by test_cli_docs)"
        return self.markers.get("skip")

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment-only and blank lines dropped."""
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = raw.rstrip()
            if self.lang == "console":
                if not line.startswith("$ ") and not pending:
                    continue
                line = line[2:] if line.startswith("$ ") else line
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
        if pending.strip():
            out.append(pending)
        return out


def run_plan(blocks: list[Block]) -> dict[str, str | None]:
    """block id -> why it is not run (its marker's reason, or "the same commands as" an earlier block: the
    commands that run, after the substitutions that drop a line, are what is compared), or None: it runs."""
    plan: dict[str, str | None] = {}
    seen: dict[tuple[str, ...], str] = {}
    for block in blocks:
        reason = block.skip_reason
        if reason is None:
            key = tuple(" ".join(shlex.split(c, comments=True)) for c in block.commands() if not not_run(c))
            reason = f"the same commands as {seen[key]}, which runs" if key in seen else None
            seen.setdefault(key, block.id)
        plan[block.id] = reason
    return plan


def doc_pages(repo: Path = REPO) -> list[Path]:
    """The user docs: README.md and every page in docs/ (a new page is picked up without a change here)."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def parse_blocks(path: Path, repo: Path = REPO) -> tuple[list[Block], list[str]]:
    """(the fenced blocks of a page with their markers, problems: unknown markers, unlabelled command blocks)."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = path.relative_to(repo).as_posix()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w.+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, lang, close = i, fence.group(3).lower(), fence.group(2)
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(close):
            body.append(lines[i])
            i += 1
        i += 1
        markers = _markers_above(lines, start, f"{rel}:{start + 1}", problems)
        if lang in SHELL_LANGS:
            blocks.append(Block(rel, start + 1, lang, "\n".join(body), markers))
        elif any(b.lstrip().startswith("pancreas-dints ") for b in body) and lang in ("", "text"):
            problems.append(f"{rel}:{start + 1}: a block of pancreas-dints commands without a language: "
                            "fence it as ```bash (it then runs) and mark it if it cannot run here")
    return blocks, problems


def _markers_above(lines: list[str], fence: int, where: str, problems: list[str]) -> dict[str, str]:
    markers: dict[str, str] = {}
    j = fence - 1
    while j >= 0 and (not lines[j].strip() or MARKER.search(lines[j])):
        for kind, arg in MARKER.findall(lines[j]):
            if kind not in MARKER_KINDS:
                problems.append(f"{where}: unknown marker docs-test: {kind} (known: {', '.join(MARKER_KINDS)})")
            elif kind == "skip" and not arg:
                problems.append(f"{where}: docs-test: skip needs a reason")
            markers[kind] = (markers.get(kind, "") + " " + arg).strip()
        j -= 1
    return markers


def all_blocks(repo: Path = REPO) -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for page in doc_pages(repo):
        found, bad = parse_blocks(page, repo)
        blocks += found
        problems += bad
    return blocks, problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_fixtures(dest: Path, demo_model: Path) -> Path:
    """The inputs the docs name, made once: tiny phantoms as ct.nii.gz, cts/ and dicom_series/, and a model
    cache (under home/) in which the demo model stands in for the official bundle."""
    import nibabel as nib
    import numpy as np
    from image_files import write_dicom_series
    from PancreasDiNTSLib.model.release import DEFAULT_VERSION
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cts").mkdir()
    for seed, name in ((900101, "ct.nii.gz"), (900102, "cts/case1.nii.gz"), (900103, "cts/case2.nii.gz")):
        hu, _label, affine = make_phantom(seed, size="tiny", orientation="RAS")
        nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), dest / name)
    hu, _label, affine = make_phantom(900104, size="tiny", orientation="RAS")
    write_dicom_series(hu, affine, dest / "dicom_series")
    cache = dest / "home" / ".cache" / "pancreas-dints" / "models" / "pancreas_ct_dints_segmentation"
    shutil.copytree(demo_model, cache / DEFAULT_VERSION)
    return dest


def block_env(work: Path) -> dict[str, str]:
    """The environment of a block: HOME inside its folder, `pancreas-dints` on PATH from this checkout."""
    bin_dir = work / ".bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "pancreas-dints"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m PancreasDiNTSLib.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANCREAS_DINTS_")}
    env.update(HOME=str(work / "home"), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(REPO / "PancreasDiNTS"), str(REPO / "PancreasDiNTSTrain"),
                                           env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    return env


def not_run(command: str) -> str | None:
    """Why a command line is replaced by nothing (a documented substitution), or None."""
    words = shlex.split(command, comments=True)
    if words[:2] == ["pancreas-dints", "download"] and not {"--from", "--print-path"} & set(words):
        return "download: the demo model stands in for official"
    if "pip" in words[:3] and words[words.index("pip") + 1:words.index("pip") + 2] == ["install"]:
        return "pip install: the test environment holds every extra"
    return None


def server_name(words: list[str]) -> str | None:
    """``serve`` or ``review`` when the command starts one of them (after any VAR=value assignments)."""
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words = words[1:]
    return words[1] if words[:1] == ["pancreas-dints"] and len(words) > 1 and words[1] in SERVERS else None


def output_paths(command: str) -> list[str]:
    """The paths a command names as its output (-o / --output), which must exist after it ran."""
    words = shlex.split(command, comments=True)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output")]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path


class BlockRun:
    """Runs one block's commands in ``work``; servers in the background; raises AssertionError on a failure."""

    def __init__(self, block: Block, work: Path, timeout: float = 600) -> None:
        self.block, self.work, self.timeout = block, work, timeout
        self.env = block_env(work)
        self.cwd = work
        self.servers: list[Server] = []
        self.ports: dict[str, str] = {}
        self.transcript: list[str] = []
        self.stdout: list[str] = []  # each command's standard output, in order

    def run(self) -> list[str]:
        try:
            for command in self.block.commands():
                self._one(command)
        finally:
            self._stop_servers()
        for expected in self.block.markers.get("expect", "").split():
            if not (self.work / expected).exists():
                raise AssertionError(f"{self.block.id}: the block names {expected}, which it did not make")
        return self.transcript

    def _substituted(self, command: str) -> str:
        for default, port in self.ports.items():
            command = re.sub(rf"(?<![\d]){default}(?![\d])", port, command)
        return command

    def _one(self, command: str) -> None:
        command = self._substituted(command)
        why = not_run(command)
        if why:
            self.transcript.append(f"(not run: {why}) {command}")
            return
        words = shlex.split(command, comments=True)
        if words[0] == "cd" and len(words) == 2:
            self.cwd = (self.cwd / os.path.expanduser(words[1].replace("~", str(self.work / "home"), 1))).resolve()
            return
        if words[0] == "export" or ASSIGNMENT.fullmatch(command.strip()):
            self._set_variables(command)
            return
        server = server_name(words)
        if server:
            self._start_server(command, server)
            return
        self.transcript.append(command)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=self.timeout)
        self.stdout.append(done.stdout)
        if done.returncode != 0:
            raise AssertionError(f"{self.block.id}: `{command}` exited {done.returncode}:\n"
                                 f"{done.stderr[-3000:]}{done.stdout[-1000:]}")
        for out in output_paths(command):
            if not (self.cwd / os.path.expanduser(out)).exists():
                raise AssertionError(f"{self.block.id}: `{command}` exited 0 but made no {out}")

    def _set_variables(self, command: str) -> None:
        """`export A=1` or `A=$(...)` on a line of its own: later commands see the variable (each command runs in
        its own shell, so the shell evaluates the line and hands back its environment)."""
        done = subprocess.run(["bash", "-c", f"set -a\n{command}\nenv -0"], cwd=self.cwd, env=self.env,
                              capture_output=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"{self.block.id}: `{command}` exited {done.returncode}: {done.stderr[-1000:]!r}")
        self.env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
        self.transcript.append(command)

    def _start_server(self, command: str, name: str) -> None:
        port = free_port()
        given = re.search(r"--port[ =](\d+)", command)
        default = given.group(1) if given else str(SERVERS[name])
        if given:
            command = command[:given.start(1)] + str(port) + command[given.end(1):]
        else:
            command = command.replace(f"pancreas-dints {name}", f"pancreas-dints {name} --port {port}", 1)
        self.ports[default] = str(port)
        log = self.work / f".server-{len(self.servers)}.log"
        self.transcript.append(f"(background) {command}")
        with log.open("w") as sink:
            process = subprocess.Popen(["bash", "-c", command], cwd=self.cwd, env=self.env, stdout=sink,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(process, port, log)
        self.servers.append(server)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{self.block.id}: `{command}` exited {process.returncode} "
                                     f"instead of serving:\n{log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{self.block.id}: `{command}` did not listen within 180 s:\n{log.read_text()[-2000:]}")

    def _stop_servers(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGINT)  # Ctrl-C, as the docs say
                try:
                    server.process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.process.pid, signal.SIGKILL)
                    server.process.wait()
                    raise AssertionError(f"{self.block.id}: {server.log.name}: the server ignored Ctrl-C "
                                         "for 60 s") from None
            if server.process.returncode not in (0, 130):
                raise AssertionError(f"{self.block.id}: the server stopped with exit {server.process.returncode} "
                                     f"after Ctrl-C:\n{server.log.read_text()[-3000:]}")


def listing(blocks: list[Block]) -> Iterator[str]:
    plan = run_plan(blocks)
    for block in blocks:
        reason = plan[block.id]
        yield f"{block.id:28} {'not run: ' + reason if reason else 'runs'}"


if __name__ == "__main__":
    found, issues = all_blocks()
    print("\n".join(listing(found)))
    print("\n".join(issues) or "markers: ok")
