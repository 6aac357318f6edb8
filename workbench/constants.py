"""Constants more than one part of the workbench must agree on, defined once."""

# The label of a position no loss is taken on (torch's cross_entropy default ignore_index).
IGNORE_INDEX = -100

# What happens to an example longer than max_length: cut at it, or dropped.
TRUNCATION_MODES = ("truncate", "drop")
