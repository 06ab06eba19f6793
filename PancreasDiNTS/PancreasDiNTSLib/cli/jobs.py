"""`pancreas-dints jobs`: the DICOM node's studies, with their states, timings and series decisions (docs/PACS.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

HELP = "list the DICOM node's studies: state, timings, the series chosen or skipped and why (docs/PACS.md)"
STATES = ("receiving", "selected", "segmenting", "sending", "done", "skipped", "failed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="~/.local/share/pancreas-dints/server", metavar="DIR",
                   help="the server's data folder (as given to `serve --data`)")
    p.add_argument("--state", choices=STATES, default=None, help="only studies in this state")
    p.add_argument("--study", default=None, metavar="ID", help="one study in full: every decision and every send")
    p.add_argument("--limit", type=int, default=50, help="newest studies shown (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _seconds(a: float | None, b: float | None) -> str:
    return f"{b - a:.1f}" if a is not None and b is not None else "-"


def _row(s: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created"]))
    waits = "/".join(_seconds(a, b) for a, b in ((s["last_instance"], s["selected"]), (s["segmenting"], s["sending"]),
                                                 (s["sending"], s["finished"])))
    chosen = next((d for d in s["decisions"] if d["decision"] == "chosen"), None)
    what = f"series {chosen['series_number']} ({chosen['description']})" if chosen else (s["reason"] or "")
    return f"{s['id'][:12]}  {when}  {s['state']:<10}  {s['calling_ae'] or '':<16}  {waits:<16}  {what}"


def _detail(store: Any, study: dict[str, Any]) -> list[str]:
    lines = [f"{k}: {study[k]}" for k in ("id", "study_uid", "source", "calling_ae", "state", "job_id", "reason")]
    lines += [f"{k}: {time.strftime('%H:%M:%S', time.localtime(study[k]))}" for k in
              ("created", "last_instance", "selected", "segmenting", "sending", "finished") if study[k]]
    lines += [f"series {d['series_number']} ({d['description']}, {d['modality']}, {d['slices']} slices): "
              f"{d['decision']}: {d['reason']}" for d in study["decisions"]]
    lines += [f"send {s['destination']} {s['sop_uid']}: {s['state']} after {s['attempts']} attempt(s)"
              + (f", {s['status']}" if s["status"] else "") for s in store.sends("study = ?", (study["id"],))]
    return lines


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.core.errors import UsageError, printable
    from PancreasDiNTSLib.server.dicom_node.spool import NodeStore

    data = Path(args.data).expanduser()
    if not (data / "node" / "node.sqlite3").is_file():
        raise UsageError(f"--data {printable(data)}: no DICOM node records there (start `serve --node-config` "
                         "with this data folder first)")
    store = NodeStore(data, readonly=True)
    try:
        if args.study is not None:
            valid = re.fullmatch(r"[0-9a-f]{1,32}", args.study) is not None
            found = store.studies("substr(id, 1, ?) = ?", (len(args.study), args.study)) if valid else []
            if len(found) != 1:
                raise UsageError(f"--study {printable(args.study)[:40]}: {'no' if not found else 'more than one'} "
                                 "study with this id (or id prefix)")
            out = [json.dumps(found[0] | {"sends": store.sends("study = ?", (found[0]["id"],))})] if args.json \
                else _detail(store, found[0])
        else:
            where, params = ("state = ?", (args.state,)) if args.state else ("1", ())
            rows = store.studies(where, params, max(1, args.limit))
            out = [json.dumps({"studies": rows, "counts": store.counts()})] if args.json else [
                f"{'study':<12}  {'received':<19}  {'state':<10}  {'calling AE':<16}  {'decide/seg/send s':<16}  "
                "series chosen, or why not", *(_row(s) for s in rows)]
    finally:
        store.close()
    print("\n".join(printable(line) if not args.json else line for line in out), file=sys.stdout)
    return 0
