"""Fuzzing config.json: whatever values its keys hold, loading either succeeds or raises one ValueError.

Never a TypeError, ZeroDivisionError, AttributeError, RecursionError or MemoryError, and never a
model that fills the memory: a config that loads and is tiny is built and run once; a larger one is
only loaded (its size was checked against the memory available).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from roberta import RobertaConfig, RobertaModel

TINY = dict(
    vocab_size=20,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=8,
    max_position_embeddings=10,
)
MAX_BUILT_PARAMETERS = 20_000  # build (and run) a model only below this

KEYS = sorted(
    {f.name for f in dataclasses.fields(RobertaConfig)} | {"model_type", "label2id", "architectures"}
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)  # near the tiny sizes: many of these load
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["gelu", "absolute", "learned", "sinusoidal", "regression", "256", ""])
    | st.text(max_size=6)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
label_maps = st.dictionaries(
    st.sampled_from(["0", "1", "2", "3", "-1", "a", "01"]) | st.integers(-1, 3), values, max_size=4
) | st.dictionaries(st.integers(0, 3).map(str), st.text(max_size=3), max_size=4)
# values a valid tiny config may hold, so that a good share of the examples load and run
plausible = (
    st.integers(0, 12)
    | st.floats(0, 1)
    | st.none()
    | st.sampled_from(["gelu", "absolute", "sinusoidal", "regression", "multi_label_classification"])
)
overrides = (
    st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS), plausible, min_size=1, max_size=3)
    | st.fixed_dictionaries({"id2label": label_maps})
)


def _load_or_value_error(load) -> RobertaConfig | None:
    try:
        return load()
    except ValueError:
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=overrides)
def test_any_values_load_or_raise_value_error(changes, tmp_path_factory):
    d = {**TINY, **changes}
    config = _load_or_value_error(lambda: RobertaConfig.from_dict(d))
    path = tmp_path_factory.mktemp("fuzz") / "config.json"
    path.write_text(json.dumps(d))
    from_file = _load_or_value_error(lambda: RobertaConfig.from_json_file(path))
    assert (config is None) == (from_file is None)
    event("loads" if config is not None else "ValueError")
    if config is None:
        return
    # what loads, saves and loads again
    assert RobertaConfig.from_dict(json.loads(json.dumps(config.to_dict()))).num_parameters() == (
        config.num_parameters()
    )
    if config.num_parameters() <= MAX_BUILT_PARAMETERS:
        event("built and run")
        model = RobertaModel(config).eval()
        with torch.no_grad():
            out = model(torch.tensor([[config.bos_token_id]])).last_hidden_state
        assert out.shape == (1, 1, config.hidden_size)


@settings(max_examples=50, deadline=None)
@given(document=values)
def test_a_file_that_is_not_a_config_object_is_a_value_error(document, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "config.json"
    path.write_text(json.dumps(document))
    if isinstance(document, dict):
        _load_or_value_error(lambda: RobertaConfig.from_json_file(path))
    else:
        with pytest.raises(ValueError, match="must hold a JSON object"):
            RobertaConfig.from_json_file(path)
