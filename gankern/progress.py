"""Progress of the long-running commands (train, demo, dirac): a tqdm bar on a terminal, and
elsewhere (a log file, CI, a pipe) one plain line every `interval` seconds.

tqdm redraws its bar with carriage returns; written into a file that is hundreds of "\r"
updates per line that nobody can read, so output that is not a terminal gets whole lines.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts `total` units of work. update(n, **postfix) after each unit; close() at the end.

    On a terminal (stderr is a tty) this is tqdm. Otherwise a line like
    "train: 400/4000 (10%), 12 s, d_loss=0.41" goes to stderr every `interval` seconds and once
    at close(), so a log shows the run is alive without flooding."""

    def __init__(self, total: int, desc: str, initial: int = 0, interval: float = 10.0, stream=None):
        self.total, self.desc, self.done = total, desc, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.postfix = {}
        self._t0 = self._last = time.monotonic()
        self._printed_at = None
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True,
                             file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        self.set_postfix(**postfix)
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def set_postfix(self, refresh: bool = False, **postfix) -> None:
        """Values shown after the count; refresh=True redraws the bar now (else at the next update)."""
        if not postfix:
            return
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=refresh)

    def _line(self) -> None:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}/{self.total}{pct}, {time.monotonic() - self._t0:.0f} s{extra}",
              file=self.stream, flush=True)
        self._printed_at = self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._printed_at != self.done:
            self._line()
