"""The client of ``pancreas-dints serve``: standard library only (urllib), for the CLI and Slicer's own process.

One HTTP API (``/v1``, see docs/SERVER.md): submit one CT (the request body is the file, or a zip of one DICOM
series; the options are query parameters), follow its status, cancel, download each result file. The token is
sent as ``Authorization: Bearer``; ``https://`` URLs are verified against the system's CAs (or ``cafile``).

- :class:`ServerClient`: one call per endpoint; every failure is a :class:`RemoteError` with the server's
  one-line reason (or why the server could not be reached).
- What comes back is checked, never trusted: an answer that is not JSON (a proxy's or a login page) is one line;
  the server must have recorded the sha256 of the bytes sent (:meth:`ServerClient.submit`); a finished job's
  file list must hold exactly the expected result names with sizes and digests (:func:`checked_files`); a report's
  volumes must be numbers (:func:`checked_report`); :meth:`ServerClient.wait` ends at its deadline.
- :class:`RemoteRun`: one whole run on a thread (upload, follow, download into ``OUTPUT/<case>/``) that speaks
  like the engine's background process: JSON progress lines to drain, a final error line, a return code; the
  Slicer module feeds them to :class:`.background.ProgressParser` exactly as it does a local run's output.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import queue
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import EXIT_DEVICE, PancreasDiNTSError, printable
from PancreasDiNTSLib.core.formats import DEFAULT_FORMATS
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.core.request import Region, RoiRequest, SegmentRequest

API = "/v1"
TERMINAL = ("done", "failed", "cancelled")
# The server puts this where its own copy of the input appeared in a message; the client puts its input back.
INPUT_PLACEHOLDER = "{input}"
# What an upload may be (the ``kind`` query parameter); the server names the stored file itself.
UPLOAD_KINDS = ("nii.gz", "nii", "nrrd", "mha", "zip")
MAX_TOKEN_BYTES = 4096
MAX_JSON_BYTES = 1 << 20
_CHUNK = 1 << 20


class RemoteError(PancreasDiNTSError):
    """The server refused a request, or could not be reached (exit 4 before any case: like a missing device)."""

    exit_code = EXIT_DEVICE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


MIN_TOKEN_CHARS = 32  # a token made by `serve` has 43 (secrets.token_urlsafe(32): 256 random bits)
MIN_TOKEN_DISTINCT = 10  # distinct characters: refuses "aaaa...aaaa" and short repeated words
TOKEN_ADVICE = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def read_token(path: str | Path, error: type[PancreasDiNTSError] | None = None, for_server: bool = False) -> str:
    """The token in ``path`` (first line, stripped), checked the same way by the server and every client: the
    file exists, is a small regular file that only its owner can read or write (POSIX), and holds a token of at
    least MIN_TOKEN_CHARS characters with MIN_TOKEN_DISTINCT distinct ones. ``error`` (default RemoteError, exit
    4) with one line saying what to do otherwise."""
    fail = error or RemoteError
    p = Path(path).expanduser()
    if not os.path.lexists(p):
        where = ("give an existing file, or leave out --token-file: the server then makes DATA/token" if for_server
                 else "the token is in the server's DATA/token file: copy that file here (chmod 600) or give "
                      "--token-file")
        raise fail(f"{printable(p)}: no such token file; {where}")
    try:
        st = p.stat()
        if not p.is_file() or st.st_size > MAX_TOKEN_BYTES:
            raise fail(f"{printable(p)}: not a token file (a small file holding the server's token)")
        if os.name == "posix" and st.st_mode & 0o077:
            raise fail(f"{printable(p)}: other users can read or change it (mode {st.st_mode & 0o777:o}); run chmod "
                       f"600 {printable(p)}")
        text = p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{printable(p)}: token file unreadable ({exc}); copy the server's token file here") from None
    if not text or not text.isprintable() or " " in text:
        raise fail(f"{printable(p)}: holds no token; copy the server's token file (DATA/token) here")
    if len(text) < MIN_TOKEN_CHARS or len(set(text)) < MIN_TOKEN_DISTINCT:
        raise fail(f"{printable(p)}: the token is too weak ({len(text)} characters, {len(set(text))} different; at "
                   f"least {MIN_TOKEN_CHARS} random characters); {TOKEN_ADVICE}")
    return text


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (traffic that never leaves the machine)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def clear_text_warning(host: str, what: str) -> str | None:
    """The one warning line for a service listening on a non-loopback address without TLS (serve, review)."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {printable(host)} without TLS: {what} and the token cross the network in clear; "
            "use a reverse proxy with HTTPS (docs/SERVER.md, docs/REVIEW.md)")


def upload_kind(path: Path) -> str:
    """The ``kind`` of an input: a NIfTI/NRRD/MetaImage file, or ``zip`` for a DICOM series folder."""
    if path.is_dir():
        return "zip"
    name = path.name.lower()
    for kind in UPLOAD_KINDS:
        if kind != "zip" and name.endswith("." + kind):
            return kind
    if name.endswith((".nhdr", ".mhd")):
        raise RemoteError(f"{printable(path)}: a header with a separate data file cannot be sent to a server; "
                          "save the image as .nrrd, .mha or .nii.gz and send that")
    raise RemoteError(f"{printable(path)}: unsupported file type for a server run; give .nii/.nii.gz, .nrrd, .mha "
                      "or a DICOM folder")


def zip_series(files: Iterable[Path], dest: Path) -> Path:
    """The files of one DICOM series in a zip at ``dest`` (stored, numbered member names)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i, f in enumerate(files):
            zf.write(f, f"{i:06d}.dcm")
    return dest


def job_options(formats: Iterable[str] = DEFAULT_FORMATS, mode: str = "fast", roi: Iterable[float] | None = None,
                roi_space: str = "ras", roi_mode: str = "grid", allow_non_ct: bool = False,
                series: str | None = None, region: str | None = None) -> dict[str, str]:
    """The query parameters of a job (the same options as ``segment``, checked as it checks them: UsageError;
    ``region`` None: the server's default). A request's own: ``SegmentRequest.to_query``."""
    box = RoiRequest(tuple(float(v) for v in roi), roi_space, roi_mode) if roi is not None else None
    where = Region("box", box) if box is not None else Region(region)
    return SegmentRequest((), Path("."), formats=tuple(formats), mode=mode, allow_non_ct=allow_non_ct, series=series,
                          region=where).to_query()


def local_message(message: str, input_name: str) -> str:
    """A server message with the server's placeholder for the upload replaced by the client's own input."""
    return printable(message.replace(INPUT_PLACEHOLDER, input_name))


class ServerClient:
    """Calls of one server with one token; each raises :class:`RemoteError` with a one-line reason."""

    def __init__(self, url: str, token: str, timeout: float = 60.0, cafile: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"--server {printable(url)}: give an http:// or https:// address, e.g. "
                              "https://gpu-server:8765")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.token = token
        self.timeout = timeout
        self.insecure = parts.scheme == "http" and not is_loopback(parts.hostname)
        context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    # -- plumbing
    def _open(self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
              headers: dict[str, str] | None = None, auth: bool = True, timeout: float | None = None) -> Any:
        url = self.url + API + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise RemoteError(self._reason(exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"{self.url}: cannot reach the server ({printable(reason)}); check the address and "
                              "that `pancreas-dints serve` runs there") from None

    def _reason(self, exc: urllib.error.HTTPError) -> str:
        try:
            data = json.loads(exc.read(MAX_JSON_BYTES) or b"{}")
            text = data.get("error") if isinstance(data, dict) else None
        except (ValueError, OSError):
            text = None
        if exc.code == 401:
            text = f"{text or 'token refused'}; check the token (the server's DATA/token file)"
        return printable(f"{self.url}: HTTP {exc.code}: {text or exc.reason}")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        with self._open(method, path, **kwargs) as resp:
            kind = str(resp.headers.get("Content-Type", "")).split(";")[0].strip() or "no type"
            try:
                data = json.loads(resp.read(MAX_JSON_BYTES) or b"{}")
            except (ValueError, UnicodeDecodeError):
                data = None
        if not isinstance(data, dict):
            raise RemoteError(f"{self.url}{API}{path}: the answer is not the server's JSON ({printable(kind)[:40]}; a "
                              "proxy or login page?); check the address points at `pancreas-dints serve`")
        return data

    # -- the API
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health", auth=False)

    def model(self) -> dict[str, Any]:
        """The model served (name, version, md5s), the worker devices and the server's limits."""
        return self._json("GET", "/model")

    def submit(self, source: Path, kind: str, options: dict[str, str]) -> dict[str, Any]:
        """Upload one input (a file, or a zip of one series) and queue it; returns the job's status. RemoteError
        unless the server recorded a job id and the sha256 of exactly the bytes sent."""
        size, sent = Path(source).stat().st_size, file_sha256(Path(source))
        try:
            with open(source, "rb") as fh:
                status = self._json("POST", "/jobs", query={"kind": kind, **options}, body=fh,
                                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                                    timeout=max(self.timeout, 600.0))
        except RemoteError as exc:
            if exc.status is not None:
                raise
            # The server answers before it reads a body it refuses (token first) and closes the connection, so
            # the upload may end in a broken pipe instead of the answer: ask again without a body for the reason.
            self.model()
            raise
        if not isinstance(status.get("id"), str) or status.get("input_sha256") != sent:
            raise RemoteError(f"{self.url}: the server did not record the image sent (sha256 "
                              f"{printable(str(status.get('input_sha256')))[:20]}, sent {sent[:16]}...); not using "
                              "that server's results")
        return status

    def status(self, job: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{urllib.parse.quote(job, safe='')}")

    def cancel(self, job: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{urllib.parse.quote(job, safe='')}/cancel")

    def delete(self, job: str) -> None:
        with self._open("DELETE", f"/jobs/{urllib.parse.quote(job, safe='')}"):
            pass

    def download(self, job: str, entry: dict[str, Any], dest: Path) -> Path:
        """Write result file ``entry`` ({"name", "size", "sha256"}) to ``dest`` (the bytes checked, atomic)."""
        name = result_name(entry)
        size, digest = int(entry["size"]), str(entry["sha256"])
        path = f"/jobs/{urllib.parse.quote(job, safe='')}/files/{urllib.parse.quote(name, safe='')}"
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            h, got = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, self._open("GET", path, timeout=max(self.timeout, 600.0)) as resp:
                while chunk := resp.read(_CHUNK):
                    got += len(chunk)
                    if got > size:
                        break
                    h.update(chunk)
                    out.write(chunk)
            if got != size or h.hexdigest() != digest:
                raise RemoteError(f"{self.url}: {printable(name)} arrived incomplete or changed ({got} of {size} "
                                  "bytes); run again")
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

    def wait(self, job: str, on_status: Callable[[dict[str, Any]], Any] | None = None, poll: float = 0.5,
             stop: Callable[[], bool] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled (or ``stop()`` says so); returns the last status.
        RemoteError when ``timeout_s`` passes first (the caller cancels the job)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status(job)
            if on_status is not None:
                on_status(status)
            if status.get("state") in TERMINAL or (stop is not None and stop()):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteError(f"{self.url}: no result after {timeout_s:g} s (state "
                                  f"{printable(str(status.get('state')))[:20]}); the job was cancelled on the server")
            time.sleep(poll)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def checked_files(status: dict[str, Any], expected: Iterable[str], optional: Iterable[str] = ()) -> list[dict[str, Any]]:
    """A finished job's ``files``, checked: entries {"name", "size" (int), "sha256" (64 hex)}, every name in
    ``expected`` present, nothing but ``expected`` and ``optional`` names; RemoteError (one line) otherwise."""
    files = status.get("files")
    wanted, allowed = set(expected), set(expected) | set(optional)
    if not isinstance(files, list) or not all(isinstance(e, dict) for e in files):
        raise RemoteError("the server's result has no list of files; not using it")
    for entry in files:
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
        if name not in allowed:
            raise RemoteError(f"the server's result holds {printable(str(name))[:80]!r}, which was not asked for; not "
                              "using it")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) or \
                len(digest) != 64:
            raise RemoteError(f"the server's result lists {name} without a size and sha256; not using it")
    missing = sorted(wanted - {e["name"] for e in files})
    if missing:
        raise RemoteError(f"the server's result lacks {', '.join(missing)}; not using it (check the server's version)")
    return files


def checked_report(report: Any) -> dict[str, Any]:
    """A result's report.json, checked: an object whose ``volumes_ml`` are finite numbers and whose
    ``outputs_failed`` maps names to reasons; RemoteError (one line) otherwise."""
    volumes = report.get("volumes_ml") if isinstance(report, dict) else None
    if not isinstance(volumes, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
            for v in volumes.values()):
        raise RemoteError("the server's report.json has no volumes or a volume that is not a number; not using it")
    failed = report.get("outputs_failed", {})
    if not isinstance(failed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in failed.items()):
        raise RemoteError("the server's report.json has a malformed outputs_failed; not using it")
    return report


def result_name(entry: dict[str, Any]) -> str:
    """The file name of a result entry: only the engine's own output names (never a path) are accepted."""
    name = str(entry.get("name", ""))
    if name not in OUTPUT_NAMES.values():
        raise RemoteError(f"the server offered {printable(name)[:80]!r}, which is not a result file name")
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def progress_event(status: dict[str, Any], case: str) -> dict[str, Any]:
    """A server status as one of the engine's JSON progress events (case, stage, fraction, message, eta_s)."""
    state = str(status.get("state", ""))
    fraction = float(status.get("fraction") or 0.0)
    if state == "queued":
        message = f"queued on the server, position {status.get('position', '?')}"
        return {"case": case, "stage": "queued", "fraction": 0.0, "message": message, "eta_s": status.get("eta_s")}
    stage = str(status.get("stage") or state)
    return {"case": case, "stage": stage, "fraction": round(fraction, 4), "message": str(status.get("message", "")),
            "eta_s": status.get("eta_s")}


class RemoteRun:
    """One server run on a thread, read like the engine's background process (Slicer polls it on a timer).

    ``drain()`` returns the engine-style output lines since the last call (JSON progress, and on failure the
    line ``pancreas-dints segment: error: <reason>``); ``ended`` and ``returncode`` (0, 1, or 130 when
    cancelled) tell when it is over. The results go to ``output_dir/<case>/`` like a local run's.
    """

    def __init__(self, client: ServerClient, source: Path, output_dir: Path, options: dict[str, str],
                 case: str = "input") -> None:
        self.client, self.source, self.output_dir, self.options, self.case = client, Path(source), output_dir, options, case
        self.job: str | None = None
        self.returncode: int | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RemoteRun:
        """Start the run's thread (once: a second call does nothing)."""
        if self._thread.ident is None:
            self._thread.start()
        return self

    def _say(self, event: dict[str, Any]) -> None:
        self._lines.put(json.dumps(event))

    def _run(self) -> None:
        try:
            self.returncode = self._follow()
        except RemoteError as exc:
            self._lines.put(f"pancreas-dints segment: error: {printable(exc)}")
            self.returncode = 130 if self._cancel.is_set() else 1
        except Exception as exc:  # noqa: BLE001 - a bug must still end the run with a line, never hang the panel
            self._lines.put(f"pancreas-dints segment: error: unexpected {type(exc).__name__}: {printable(exc)}")
            self.returncode = 1

    def _follow(self) -> int:
        self._say({"case": self.case, "stage": "upload", "fraction": 0.0, "message": "sending the image"})
        submitted = self.client.submit(self.source, upload_kind(self.source), self.options)
        self.job = str(submitted["id"])
        if self._cancel.is_set():
            self.client.cancel(self.job)
            return 130
        final = self.client.wait(self.job, lambda s: self._say(progress_event(s, self.case)), stop=self._cancel.is_set)
        if self._cancel.is_set() and final.get("state") not in ("done", "failed"):
            return 130
        if final.get("state") != "done":
            raise RemoteError(local_message(str(final.get("error") or final.get("state")), self.source.name))
        folder = self.output_dir / self.case
        folder.mkdir(parents=True, exist_ok=True)
        report = OUTPUT_NAMES["report"]
        asked = [OUTPUT_NAMES[f] for f in self.options.get("formats", "").split(",") if f in OUTPUT_NAMES]
        for entry in checked_files(final, [report], [*asked, report]):
            self.client.download(self.job, entry, folder / result_name(entry))
        with contextlib.suppress(RemoteError):
            self.client.delete(self.job)
        self._say({"case": self.case, "stage": "done", "fraction": 1.0, "message": "results received",
                   "output_dir": str(folder)})
        return 0

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop following, and cancel the job on the server (its worker's process tree is ended there)."""
        self._cancel.set()
        if self.job is not None:
            with contextlib.suppress(RemoteError):
                self.client.cancel(self.job)
        self._thread.join(timeout)

    def drain(self) -> list[str]:
        lines: list[str] = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    @property
    def ended(self) -> bool:
        return self.returncode is not None and self._lines.empty()
