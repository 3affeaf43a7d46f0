"""Reading an offline W&B run back, so tests check what W&B would receive, not only that nothing raised.

wandb 0.31 ships no Python reader for its ``.wandb`` files (the writer is the Go ``wandb-core``), but the
format is small: LevelDB's log format (32 KiB blocks, records split into FULL / FIRST / MIDDLE / LAST
chunks, each with a 7-byte header) after a 7-byte file header, every record a ``wandb.proto`` ``Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every ``wandb_internal_pb2.Record`` of a ``run-<id>.wandb`` file, in order (checksums not verified)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _ = FILE_HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B run file"
    pos, pending, records = FILE_HEADER.size, b"", []
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@dataclass
class OfflineRun:
    """What one offline run folder (``runs/wandb/offline-run-<time>-<id>``) holds."""

    folder: Path
    id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)  # ArtifactRecord messages

    def keys(self) -> set[str]:
        """Every metric or media key logged at some step."""
        return {key for row in self.history for key in row}

    def series(self, key: str) -> list[Any]:
        """A key's values in the order they were logged."""
        return [row[key] for row in self.history if key in row]


def _put(target: dict[str, Any], items: Any) -> dict[str, Any]:
    """Items of a config / history / summary record into ``target``; a nested key (``["img", "_type"]``, how
    W&B sends a logged dict such as an image) becomes nested dicts."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        place = target
        for key in keys[:-1]:
            place = place.setdefault(key, {})
        place[keys[-1]] = json.loads(item.value_json)
    return target


def read_run(folder: Path) -> OfflineRun:
    """The run id, config, history rows, summary and artifacts of an offline run folder."""
    (path,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(folder=Path(folder))
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.id = record.run.run_id
            _put(run.config, record.run.config.update)
        elif kind == "config":
            _put(run.config, record.config.update)
        elif kind == "history":
            run.history.append(_put({}, record.history.item))
        elif kind == "summary":
            _put(run.summary, record.summary.update)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (a ``save_dir``: the runs are in ``<root>/wandb``), oldest first."""
    return [read_run(folder) for folder in sorted((Path(root) / "wandb").glob("offline-run-*"))]
