"""NVIDIA-style debug log lines (``-d/--debug FILE``, the hook's ``-debug``).

Format of libnvidia-container's log: ``I1122 18:12:58.648174 217303 nvc.c:376] message`` — level letter, month and
day, time with microseconds, thread id, source location. Admins grep these; we keep the shape and name our own
module as the location. Writing is append-only and never fails the operation being logged.
"""

from __future__ import annotations

import os
import time


class DebugLog:
    def __init__(self, path: str | None = None, stream=None) -> None:
        self.path = path
        self.stream = stream
        self._file = None

    @property
    def enabled(self) -> bool:
        return bool(self.path or self.stream)

    def _write(self, level: str, where: str, message: str) -> None:
        if not self.enabled:
            return
        now = time.time()
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
        line = f"{level}{stamp} {os.getpid()} {where}] {message}\n"
        try:
            if self.stream is not None:
                self.stream.write(line)
                self.stream.flush()
            if self.path:
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept for the run
                self._file.write(line)
                self._file.flush()
        except OSError:
            pass

    def info(self, message: str, where: str = "nvc") -> None:
        self._write("I", where, message)

    def warning(self, message: str, where: str = "nvc") -> None:
        self._write("W", where, message)

    def error(self, message: str, where: str = "nvc") -> None:
        self._write("E", where, message)


NULL_LOG = DebugLog()
