"""Model import: checkpoints made from something other than a checkpoint, a GGUF file
(``gguf.py``) or a random tiny model with a real tokenizer (``tiny.py``, the recipe's
``import: {tiny: ...}`` and the test suite's fixtures)."""
