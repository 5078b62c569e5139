"""Token-by-token decoding, one implementation for every caller: `generate` (one prompt or a file of them),
`chat`, `serve`, the sample generations during training and `eval --generate`.

`rules` holds the bounds of every sampling setting, checked at each edge (flags, the page, HTTP bodies),
`sampling` chooses each row's next token under its own settings, `batch` keeps the rows' caches in one
left-padded batch that rows join and leave between steps, `text` turns a row's tokens into text and finds
its stop strings, and `engine` ties them together: jobs in, text and finish reasons out.
"""

from .engine import Decoder, Job, decode_all, take_fitting
from .sampling import SamplingSettings

__all__ = ["Decoder", "Job", "SamplingSettings", "decode_all", "take_fitting"]
