"""Prepare text for training: read, clean, de-duplicate, split, tokenize and pack into token files.

The words this package (and the data report) uses, each for one thing:
- document: one record as read from a file (a text, a JSONL object, a CSV or Parquet row, a chat log); what
  cleaning and de-duplication count (`documents_read`, `documents_kept`).
- unit: what the task makes of a document, kept whole on one side of the split (a text, a conversation, a
  labelled text, a preference pair); for plain text, the document itself. A split's `documents` counts its units.
- example: one tokenized item a unit yields for a task that trains on whole examples (a conversation's pieces,
  a pair's two answers); a split's `examples`.
- block: data.block_size tokens cut from packed text (`TokenBlocks`); not the model's transformer blocks, which
  `model.freeze_layers` and `model.train_last_layers` count.
- row: one sequence of a batch: a block, an example, or several examples packed together (data.packing:
  documents); a split's `rows` counts its blocks, or its examples.
"""

from .blocks import TokenBlocks
from .prepare import PreparedData, prepare_data, prepare_eval_data

__all__ = ["PreparedData", "TokenBlocks", "prepare_data", "prepare_eval_data"]
