"""A real ``pancreas-dints serve`` on 127.0.0.1 for the server tests: started as a subprocess with the packaged
demo model on the CPU, found through DATA/server.json, stopped (or killed) by its process id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

START_TIMEOUT_S = 240.0


@dataclass
class Server:
    proc: subprocess.Popen
    data: Path
    token_file: Path
    url: str

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def workers(self) -> list[psutil.Process]:
        """The worker processes (children of the server)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def make_token(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "token"
    path.write_text("test-token-" + os.urandom(16).hex() + "\n")
    path.chmod(0o600)
    return path


def start_server(data: Path, token_file: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    """Start the server and wait until it listens (its server.json names the address)."""
    info = data / "server.json"
    if info.exists():
        info.unlink()
    run_env = dict(env or os.environ)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    log = open(data.parent / f"{data.name}-serve.log", "a")  # noqa: SIM115
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.cli", "serve", "--port", "0", "--data", str(data), "--model",
           str(PACKAGED_DEMO_MODEL), "--device", "cpu", "--token-file", str(token_file), *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: "
                               f"{(data.parent / f'{data.name}-serve.log').read_text()[-2000:]}")
        if info.exists():
            return Server(proc, data, token_file, json.loads(info.read_text())["url"])
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in time")


def write_ct(path: Path, shape: tuple[int, int, int] = (40, 40, 24), seed: int = 1, crop_z: int | None = None) -> Path:
    """A small synthetic CT (phantom, int16 HU) as NIfTI; ``crop_z`` keeps that many slices (a distinct input)."""
    import nibabel as nib
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    hu, _, affine = make_phantom(seed, shape=shape, spacing=(1.6, 1.6, 2.0), orientation="RAS")
    if crop_z is not None:
        hu = hu[:, :, :crop_z]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(hu, dtype=np.int16), affine), str(path))
    return path


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    """Poll ``predicate()`` until it returns something true; that value (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")
