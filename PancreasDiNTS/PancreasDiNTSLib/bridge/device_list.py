"""The devices the engine can run on, listed in a separate process (``python -m PancreasDiNTSLib.bridge.device_list``)
so torch never loads in Slicer's.
"""

from __future__ import annotations

import json
import sys

DEFAULT_DEVICES = [("auto", "Automatic (GPU if available)"), ("cpu", "CPU")]


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


def main(argv: list[str] | None = None) -> int:
    """``python -m PancreasDiNTSLib.bridge.device_list devices``: print the device list as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["devices"]:
        print("usage: python -m PancreasDiNTSLib.bridge.device_list devices", file=sys.stderr)
        return 2
    print(json.dumps(list_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
