"""The one decoder-layer name pattern (merge's layer gradients, the student cut)."""

import pytest

from workbench.constants import LAYER_NAME


@pytest.mark.parametrize("name,prefix,index,rest", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers", 0, "self_attn.q_proj.weight"),
    ("transformer.h.11.mlp.c_fc.bias", "transformer.h", 11, "mlp.c_fc.bias"),
    ("layers.3.ffn.weight", "layers", 3, "ffn.weight"),
    ("backbone.blocks.2.mixer.weight", "backbone.blocks", 2, "mixer.weight"),
    ("encoder.layer.4.output.dense.weight", "encoder.layer", 4, "output.dense.weight"),
    ("model.layers.1.experts.layers.7.w1", "model.layers", 1, "experts.layers.7.w1"),  # the first counts
])
def test_decoder_layer_names_split_into_prefix_index_rest(name, prefix, index, rest):
    match = LAYER_NAME.match(name)
    assert (match["prefix"], int(match["index"]), match["rest"]) == (prefix, index, rest)


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                                  "transformer.wte.weight", "model.layers.weight", "model.hlayers.0.w"])
def test_other_tensors_are_no_layer(name):
    assert LAYER_NAME.match(name) is None
