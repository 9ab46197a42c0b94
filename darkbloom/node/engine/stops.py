"""Stop-string matching over a stream of text deltas (pure, no MLX)."""

from __future__ import annotations


class StopMatcher:
    """Holds back just enough text to never emit part of a stop string.

    ``feed`` returns the text that is safe to emit and whether a stop string
    was hit (the stop string and everything after it are dropped, as OpenAI
    does). ``flush`` returns what is held back once the stream ends.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=0) - 1
        self._pending = ""
        self.matched: str | None = None
        """The stop string that was hit, once one is."""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.matched = min((s for s in self._stops if buf.find(s) == cut), key=len)
            self._pending = ""
            return buf[:cut], True
        if self._hold <= 0:
            self._pending = ""
            return buf, False
        safe = len(buf) - self._hold
        if safe <= 0:
            self._pending = buf
            return "", False
        self._pending = buf[safe:]
        return buf[:safe], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
