"""The example model file models/dln.py (a deep linear network), loaded by its path as `--model models/dln.py:dln`
loads it: shapes, no biases, the product of its layers. The demo's model file is tested in tests/demo/test_model.py."""

import pytest
import torch
from modelfiles import load_model_file

dln_mod = load_model_file("dln")


def test_dln_shapes_and_no_bias():
    model = dln_mod.dln(widths=[4, 8, 3])
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(8, 4), (3, 8)]
    assert all(layer.bias is None for layer in model.layers)
    assert model(torch.randn(5, 4)).shape == (5, 3)
    assert model.product().shape == (3, 4)


def test_dln_default_widths():
    assert dln_mod.dln().config.widths == [4, 8, 4]


def test_dln_product_is_composition():
    torch.manual_seed(0)
    model = dln_mod.dln(widths=[3, 5, 7, 2])
    W1, W2, W3 = (layer.weight for layer in model.layers)
    torch.testing.assert_close(model.product(), W3 @ W2 @ W1)


def test_dln_forward_matches_product():
    torch.manual_seed(0)
    model = dln_mod.dln(widths=[3, 5, 7, 2])
    x = torch.randn(10, 3)
    torch.testing.assert_close(model(x), x @ model.product().T)


def test_dln_single_layer_and_bad_widths():
    model = dln_mod.dln(widths=[3, 2])
    torch.testing.assert_close(model.product(), model.layers[0].weight)
    with pytest.raises(ValueError):
        dln_mod.dln(widths=[3])
