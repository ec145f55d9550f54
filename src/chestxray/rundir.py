"""RUN/evaluations.json: the record of every evaluation of a run, wherever its files were written, so that the
model card and the report find them all (`evaluate --out` elsewhere included)."""

from __future__ import annotations

import json
from pathlib import Path

from .files import file_lock, write_text

EVALUATIONS = "evaluations.json"


def record_evaluation(run_dir: Path, entry: dict) -> None:
    """Add an evaluation to RUN/evaluations.json (one entry per output folder, the latest kept), under a lock."""
    path = run_dir / EVALUATIONS
    with file_lock(run_dir / f".{EVALUATIONS}.lock"):
        try:
            entries = json.loads(path.read_text()) if path.exists() else []
        except ValueError:
            entries = []
        entries = [e for e in entries if e.get("out") != entry["out"]] + [entry]
        write_text(path, json.dumps(entries, indent=2))


def read_evaluations(run_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, metrics) of every evaluation of a run: those RUN/evaluations.json records, wherever they were
    written, and any RUN/eval/*/metrics.json from before the record existed."""
    folders = []
    record = run_dir / EVALUATIONS
    if record.exists():
        try:
            folders += [Path(e["out"]) for e in json.loads(record.read_text())]
        except (ValueError, KeyError, TypeError):
            pass
    folders += sorted(p.parent for p in (run_dir / "eval").glob("*/metrics.json"))
    out, seen = [], set()
    for folder in folders:
        path = (folder / "metrics.json").resolve()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        try:
            out.append((folder, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out
