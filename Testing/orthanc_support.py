"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the DICOM node tests: started as a
subprocess on free loopback ports with a temporary configuration, driven through its REST API, stopped by its
process id. Skips (fails under CI=1) when Orthanc is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: Orthanc gets SIGTERM when the test process ends, even by kill -9 (Linux)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or shutil.which("orthanc")
    if found is None or not DICOMWEB_PLUGIN.is_file():
        message = "Debian's orthanc and orthanc-dicomweb are needed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Orthanc:
    proc: subprocess.Popen
    folder: Path
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, body: object = None, timeout: float = 120.0) -> object:
        response = requests.request(method, self.url + path, data=None if body is None else (
            body if isinstance(body, bytes) else json.dumps(body)), timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, files: list[Path]) -> set[str]:
        """POST each file to /instances; the Orthanc study ids."""
        return {str(self.rest("POST", "/instances", f.read_bytes())["ParentStudy"]) for f in files}  # type: ignore[index]

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port})

    def add_dicomweb_server(self, name: str, url: str, token: str) -> None:
        self.rest("PUT", f"/dicom-web/servers/{name}", {"Url": url, "HttpHeaders": {"Authorization": f"Bearer {token}"}})

    def study_id(self, study_uid: str) -> str | None:
        found = self.rest("POST", "/tools/lookup", study_uid.encode())
        return next((str(f["ID"]) for f in found if f["Type"] == "Study"), None)  # type: ignore[union-attr]

    def series_of(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the series of a study (DICOM JSON)."""
        response = requests.get(f"{self.dicomweb}/studies/{study_uid}/series", timeout=60)
        response.raise_for_status()
        return response.json() if response.content else []

    def instances_of(self, study_uid: str, series_uid: str) -> list[dict]:
        response = requests.get(f"{self.dicomweb}/studies/{study_uid}/series/{series_uid}/instances", timeout=60)
        response.raise_for_status()
        return response.json() if response.content else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def start_orthanc(folder: Path, aet: str = "ORTHANC", dicom_port: int | None = None) -> Orthanc:
    """Orthanc with the DICOMweb plugin on free loopback ports (no authentication: loopback only)."""
    binary = orthanc_binary()
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {"Name": "test-pacs", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "DicomModalities": {},
              "DicomScuTimeout": 30, "HttpTimeout": 60, "StableAge": 1}
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    log.close()
    server = Orthanc(proc, folder, http_port, dicom_port, aet)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited {proc.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.rest("GET", "/system", timeout=2)
            return server
        except requests.exceptions.RequestException:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError("Orthanc did not start in time")
