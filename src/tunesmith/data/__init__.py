"""Prepare text for training: read, clean, de-duplicate, split, tokenize and pack into token files.

The words this package (and the data report) uses, each for one thing:
- document: one record as read from a file (a text, a JSONL object, a CSV or Parquet row, a chat log); what
  cleaning and de-duplication count (`documents_read`, `documents_kept`).
- unit: what the task makes of a document, kept whole on one side of the split (a text, a conversation, a
  labelled text, a preference pair); for plain text, the document itself. A split's `documents` counts its units.
- example: one tokenized item a unit yields for a task that trains on whole examples (a conversation's pieces,
  a pair's two answers); a split's `examples`.
- block: a row of data.block_size tokens cut from packed text (`TokenBlocks`).
- row: what a training step's batch holds, a block or an example; a split's `rows`.
"""

from .blocks import TokenBlocks
from .prepare import PreparedData, prepare_data, prepare_eval_data

__all__ = ["PreparedData", "TokenBlocks", "prepare_data", "prepare_eval_data"]
