"""The one progress display: a tqdm bar on an interactive terminal, plain log lines every ``every`` steps otherwise
(a batch job's log file gets a readable line, not thousands of carriage returns)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """``every=None``: the bar only, no log lines (an evaluation pass)."""

    def __init__(self, total: int, desc: str, every: int | None, enabled: bool,
                 log: Callable[[str], None] = print, unit: str = "step"):
        self.total, self.desc, self.every, self.log, self.unit = total, desc, every, log, unit
        self.start = time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, done: int, images: int, **shown: float) -> None:
        """``done`` of ``total`` finished, ``images`` processed so far; ``shown`` (loss, lr) formatted in the line."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        ips = images / max(elapsed, 1e-9)
        values = {k: (f"{v:.4f}" if k == "loss" else f"{v:.2e}") for k, v in shown.items()}
        if self.bar is not None:
            self.bar.set_postfix(**values, img_s=f"{ips:.3g}")
            self.bar.update(1)
        elif self.every and (done % self.every == 0 or done == self.total):
            eta = elapsed / done * (self.total - done)
            fields = " ".join(f"{k} {v}" for k, v in values.items())
            self.log(f"{self.desc} {self.unit} {done}/{self.total} {fields} img/s {ips:.3g} "
                     f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def tick(self, n: int = 1) -> None:
        """``n`` more done, nothing to show beside the count."""
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
