"""Tensor specs: binding named dynamic axes, benchmark inputs from them, declarations merged."""

import numpy as np
import pytest

from edgekd.errors import ConfigError
from edgekd.tasks.spec import TensorSpec, merge_declared, parse_shape_bindings, specs_from_json, specs_to_json

IDS = TensorSpec("input_ids", "int64", ("batch", "sequence"), 0, 30522)


def test_bind_named_axes_and_the_batch():
    assert IDS.bind({"sequence": 128}, batch=4) == (4, 128)
    assert IDS.bind({"sequence": 128, "batch": 2}) == (2, 128)
    assert TensorSpec("x", shape=(None, 3, None)).bind({"x:2": 9}) == (1, 3, 9)


def test_an_unbound_axis_names_itself_and_the_fix():
    with pytest.raises(ConfigError, match=r"input 'input_ids' axis 1 \('sequence'\) is dynamic and no length was "
                                          r"declared; declare it with --shape sequence=N or `shapes: \{sequence: N\}`"):
        IDS.bind({})
    with pytest.raises(ConfigError, match="must be a positive integer"):
        IDS.bind({"sequence": 0})


def test_examples_stay_in_their_value_ranges():
    ids = IDS.example({"sequence": 64}, batch=8)
    assert ids.dtype == np.int64 and ids.shape == (8, 64) and 0 <= ids.min() and ids.max() < 30522
    assert ids.max() > 2  # the vocabulary is used, not only 0 and 1
    mask = TensorSpec("mask", "int64", ("batch", "sequence")).example({"sequence": 64})
    assert set(np.unique(mask)) <= {0, 1}
    image = TensorSpec("input", "float32", ("batch", 3, 4, 4)).example()
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() < 1


def test_declarations_round_trip_and_fill_what_the_runtime_lost():
    assert specs_from_json(specs_to_json([IDS])) == [IDS]
    found = [TensorSpec("input_ids", "int64", (None, None)), TensorSpec("other", "float32", (None,))]
    merged = merge_declared(found, [IDS])
    assert merged[0] == IDS and merged[1] == found[1]


@pytest.mark.parametrize("bad", ["sequence", "sequence=", "=4", "sequence=-1", "sequence=x"])
def test_shape_bindings_are_parsed_strictly(bad):
    with pytest.raises(ConfigError, match="expected NAME=LENGTH"):
        parse_shape_bindings([bad])


def test_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dtype 'int65'"):
        TensorSpec("x", "int65")
    with pytest.raises(ConfigError, match="value range"):
        TensorSpec("x", "int64", (1,), 5, 5)
