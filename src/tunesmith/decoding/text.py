"""One choice's text as its tokens arrive: what can be sent now, and whether a stop string has ended it.

The whole continuation is decoded again at each token (a few hundred tokens decode in microseconds), which
keeps multi-byte characters and tokenizer clean-ups right. Text that could still be the start of a stop
string, or half of a UTF-8 character, is held back until it is clear.
"""

from __future__ import annotations

import os


class ChoiceText:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated token; returns the new text that is safe to send (possibly empty)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.stops:  # from where the text changed: a token that completes a character replaces its placeholder
            start = max(0, len(os.path.commonprefix([self.text, text])) - self.hold)
            found = [i for i in (text.find(stop, start) for stop in self.stops) if i != -1]
            if found:
                self.text, self.stopped = text[: min(found)], True
                return self.rest()
        self.text = text
        complete = len(text.rstrip("\ufffd"))  # past it: the first bytes of characters whose last bytes are still to come
        return self._send_to(complete - self.hold)

    def rest(self) -> str:
        """Everything not sent yet: called when the choice ends."""
        return self._send_to(len(self.text))

    def _send_to(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece
