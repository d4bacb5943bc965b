"""The request log: one JSON line per finished request — the prompt, the predicted and the true
output length — from which the profiler refits the length predictor online.

The file is bounded: when it passes ``max_bytes`` it is renamed to ``<path>.1`` (replacing the
previous one) and a new file begins, so at most about twice ``max_bytes`` are on disk; a prompt is
cut to ``max_prompt_chars``, so no one line escapes that bound.

Prompts are what users typed: they are left out unless ``keep_prompts`` (the predictor's refit
learns from them), and the files are readable by their owner only (0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
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
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        keep_prompts: bool = False,
        max_prompt_chars: int = 16_384,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_prompts = keep_prompts
        self._max_bytes = max_bytes
        self._max_prompt_chars = max_prompt_chars
        self._file = self._open()
        self._size = self._file.tell()

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # also a file an older gateway created with the umask's mode
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: RequestRecord) -> None:
        prompt = ""
        if self.keep_prompts:
            # Valid JSON may carry lone surrogates, which UTF-8 cannot encode: they become "?".
            cut = record.prompt[: self._max_prompt_chars]
            prompt = cut.encode("utf-8", "replace").decode("utf-8")
        line = json.dumps(asdict(replace(record, prompt=prompt)), ensure_ascii=False) + "\n"
        self._file.write(line)
        self._file.flush()  # a reader (the profiler) sees whole lines as they finish
        self._size += len(line.encode())
        if self._size >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self._open()
        self._size = 0

    def close(self) -> None:
        self._file.close()
