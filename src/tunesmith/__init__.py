"""tunesmith: fine-tune pre-trained GPT-style language models on your own text.

The training code lives in the `training` subpackage (not `train`) so that `tunesmith.train` stays
the API function.
"""

from .api import evaluate, generate, prepare, train
from .config import RunConfig, load_config

__all__ = ["RunConfig", "evaluate", "generate", "load_config", "prepare", "train"]
__version__ = "0.1.0"
