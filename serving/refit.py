"""The learned length predictor refitted in the pod, from the gateway's own request log.

Every answer already recalibrates the model's verbosity (``LearnedLengthPredictor.observe``); what
only a refit relearns is which prompts ask for long answers. So every ``intervalS`` the refitter
reads the lines the request log gained, and once ``minNewRecords`` usable requests have arrived it
refits a copy of the live model on the recent window, warm-started so a small log does not undo
what the shipped model learned (``goodput.profiler.online``), and swaps the copy in. No restart,
and no second process: the log it reads is the one this gateway writes.

Bounded: the window holds at most ``window`` requests, each look reads only what was appended
since the last, one refit runs at a time in one worker process (the fit is CPU-bound and mostly
Python: in a thread it would stall the event loop), and a failure is logged and tried again at
the next interval, never raised into the gateway. The copy is taken on the event loop, where
calibration updates happen, so it is consistent; updates made while the copy is being fitted are
not carried over (seconds' worth).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from goodput.api.gateway_config import RefitConfig
from goodput.profiler.online import (
    LoggedRequest,
    OnlineLengthLearner,
    parse_request_line,
    refitted,
)
from goodput.serving.length_estimate import LearnedLengthPredictor

log = logging.getLogger(__name__)


class LogTail:
    """The whole lines appended to a JSON Lines file since the last ``read``, across the
    request log's rotation (``path`` renamed to ``path.1``, a new ``path`` begun)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._inode: int | None = None
        self._offset = 0

    def read(self) -> list[str]:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return []
        lines: list[str] = []
        if self._inode is not None and inode != self._inode:
            rotated = self.path.with_name(self.path.name + ".1")
            if rotated.exists() and rotated.stat().st_ino == self._inode:
                lines += self._lines(rotated, final=True)
            self._offset = 0
        self._inode = inode
        return lines + self._lines(self.path, final=False)

    def _lines(self, path: Path, *, final: bool) -> list[str]:
        """Whole lines from the offset on; a partial last line waits for its end, unless the
        file will not grow again (``final``)."""
        with path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = len(data) if final else data.rfind(b"\n") + 1
        self._offset += end
        return data[:end].decode("utf-8", errors="replace").splitlines()


def _spawned_worker() -> Executor:
    """One worker process, started fresh (not forked from a process with threads)."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


class PredictorRefitter:
    """Refits ``predictor``'s model from the request log at ``log_path`` as ``config`` says.

    The fit runs in ``executor`` (default: one spawned worker process, started at the first
    refit, not forked from a process with threads): fitting takes seconds and is largely Python
    holding the GIL, which in a thread would stall the event loop that streams every response;
    in a process the loop only pickles the fit's inputs and its result.
    """

    def __init__(
        self,
        predictor: LearnedLengthPredictor,
        log_path: str | os.PathLike[str],
        config: RefitConfig,
        executor: Callable[[], Executor] = _spawned_worker,
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.tail = LogTail(log_path)
        self.learner = OnlineLengthLearner(
            predictor.model,
            refit_every=config.min_new_records,
            window=config.window,
            min_prompts=config.min_prompts,
        )
        self.refits = 0
        self._make_executor = executor
        self._executor: Executor | None = None

    def collect(self) -> int:
        """Window the requests the log gained; returns how many were usable."""
        records = (parse_request_line(line) for line in self.tail.read() if line.strip())
        return sum(self.learner.remember(r) for r in records if isinstance(r, LoggedRequest))

    async def step(self) -> bool:
        """One look at the log, and a refit when enough arrived; True if a new model is in use."""
        self.collect()
        if not self.learner.due:
            return False
        if self._executor is None:
            self._executor = self._make_executor()
        candidate = copy.deepcopy(self.predictor.model)  # here, between calibration updates
        prompts, lengths = self.learner.training_set()
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, refitted, candidate, prompts, lengths)
        self.learner.adopt(model)
        self.predictor.use(model)
        self.refits += 1
        log.info("length predictor refitted on %d recent requests", len(prompts))
        return True

    async def run(self) -> None:
        """``step`` every ``intervalS`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.step()
            except Exception:
                log.exception(
                    "length predictor refit failed; retrying in %gs", self.config.interval_s
                )

    def close(self) -> None:
        """Stop the worker (a refit in progress is abandoned)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
