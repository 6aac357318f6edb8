"""Constants more than one part of the workbench must agree on, defined once."""

import re

# The label of a position no loss is taken on (torch's cross_entropy default ignore_index).
IGNORE_INDEX = -100

# What happens to an example longer than max_length: cut at it, or dropped.
TRUNCATION_MODES = ("truncate", "drop")

# A decoder layer's tensor in Hugging Face naming: model.layers.N.* (llama, qwen2, mistral, ...),
# transformer.h.N.* (gpt2), and the ...blocks.N.* / ...layer.N.* mergekit also knows. The first
# such segment of a name counts; ``prefix`` is what precedes the index, ``rest`` what follows it.
LAYER_NAME = re.compile(r"^(?P<prefix>(?:.+?\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.(?P<rest>.+)$")
