"""What is held at once in this process, counted per key: a caller's open streams, a run owner's
event streams (lesson 10), a client's tool calls in flight (lesson 08). One event loop: no lock.

Each slot comes with the function that gives it back, once however often it is called: a stream
that ends twice over (its generator closed, then its dependency's cleanup) frees one slot, not two.
What a full cap answers (a 429, a 503, which message) is the caller's to say.
"""

from collections import Counter
from collections.abc import Callable
from typing import Literal


class HeldSlots:
    def __init__(self) -> None:
        self.held: Counter[str] = Counter()

    def full(
        self, key: str, per_key: int, total: int | None = None
    ) -> Literal["total", "key", None]:
        """Which cap one more slot for `key` would pass: `total`, all keys' together (when there
        is one), or the key's own `per_key`; None when it fits."""
        if total is not None and self.held.total() >= total:
            return "total"
        if self.held[key] >= per_key:
            return "key"
        return None

    def take(self, key: str) -> Callable[[], None]:
        """One more slot for `key`: the function that gives it back."""
        self.held[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held[key] -= 1
                if self.held[key] <= 0:
                    del self.held[key]

        return release
