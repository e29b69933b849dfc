"""Issue 10, item 9: Ctrl-C acts within a second in every phase, also while models load or prompts are prepared
(it used to wait 5-7 s for start-up to end); the lock is released and finished work kept."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fakes import FakeDecoder, FakePrompts, FakeStages
from levo_batch.interrupt import StopRequested, interruptible
from levo_batch.lock import LOCK_NAME
from levo_batch.pipeline import run
from test_pipeline import jobs_file, options  # noqa: F401 (fixture)

SLOW = 30.0


class SlowPrompts(FakePrompts):
    def prepare(self, job, seed):
        time.sleep(SLOW)


class SlowDecoder(FakeDecoder):
    def decode(self, songs):
        time.sleep(SLOW)
        yield from super().decode(songs)


class SlowLoading(FakeStages):
    def generator(self):
        time.sleep(SLOW)


@pytest.mark.parametrize("phase", ["prompts", "loading", "decoding"])
def test_ctrl_c_stops_within_a_second_in_every_phase(jobs_file, tmp_path, phase):
    stages = {"prompts": FakeStages(prompts_obj=SlowPrompts()), "loading": SlowLoading(),
              "decoding": FakeStages(decoder_obj=SlowDecoder())}[phase]
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises((KeyboardInterrupt, StopRequested)), interruptible():
            run(options(jobs_file, tmp_path), stages)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 0.5 + 1.0
    assert not (tmp_path / "out" / LOCK_NAME).exists()
