"""Model import: checkpoints made from something other than a checkpoint, a GGUF file
(``gguf.py``) or a random tiny model with a real tokenizer (``tiny.py``, the recipe's
``import: {tiny: ...}`` and the test suite's fixtures)."""

from workbench.model_import.gguf import import_gguf, load_gguf
from workbench.model_import.tiny import build_tiny, check_tiny_options

__all__ = ["build_tiny", "check_tiny_options", "import_gguf", "load_gguf"]
