"""The progress bar of a long ``generate`` call: prompts done (of the total, when known), output
tokens per second, and the share of the time the device waited for input (prompt mapping)."""

from __future__ import annotations

import time
from typing import Any


class GenerateProgress:
    """A tqdm bar over finished prompts; ``feed`` is the call's ``PromptFeed`` (for its wait time)."""

    def __init__(self, total: int | None, feed: Any, enabled: bool):
        from tqdm.auto import tqdm

        self.feed = feed
        self.output_tokens = 0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc="generate", unit="prompt", disable=not enabled)

    def finished(self, output_tokens: int) -> None:
        """One prompt finished, having generated ``output_tokens``."""
        self.output_tokens += output_tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.output_tokens / elapsed:.1f} tok/s, input wait "
                                 f"{self.feed.wait_s / elapsed:.0%}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
