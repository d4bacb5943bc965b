"""The request log: one JSON line per finished request — the prompt, the predicted and the true
output length — from which the profiler refits the length predictor online.

The file is bounded: when it passes ``max_bytes`` it is renamed to ``<path>.1`` (replacing the
previous one) and a new file begins, so at most about twice ``max_bytes`` are on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True, slots=True)
class RequestRecord:
    ts: float
    deployment: str
    model: str
    request_id: str
    prompt: str
    prompt_tokens: int
    max_tokens: int | None
    predicted_p50: float
    predicted_p90: float
    output_tokens: int
    finish_reason: str


class RequestLog:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._size = self._file.tell()

    def write(self, record: RequestRecord) -> None:
        line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
        self._file.write(line)
        self._file.flush()  # a reader (the profiler) sees whole lines as they finish
        self._size += len(line.encode())
        if self._size >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        self._file.close()
