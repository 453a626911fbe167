"""timm's own per-model tests (its tests/test_models.py), run against ``mambaout.create_model``.

The test file ships in timm's source distribution on PyPI; the README's test command fetches it before pytest
runs (``tests/fetch_timm_tests.py``, or set $TIMM_TESTS_DIR to a folder holding it). timm's test functions are
called unchanged, with the factory they use swapped for ours, so every contract timm checks of its own models
(forward, backward, grad checkpointing, default cfgs, classifier reset, meta device, features, intermediates, FX
tracing) is checked of ours.
"""
import importlib.util
import os
from pathlib import Path

import pytest
from fetch_timm_tests import target

import mambaout
from mambaout.models import zoo

# CI (CI=true) must run the suite; elsewhere a machine that has not fetched it skips it.
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("MAMBAOUT_REQUIRE_TIMM_TESTS") == "1"


def _timm_tests() -> Path:
    if os.environ.get("TIMM_TESTS_DIR"):
        return Path(os.environ["TIMM_TESTS_DIR"]) / "test_models.py"
    return target()


@pytest.fixture(scope="module")
def suite():
    try:
        path = _timm_tests()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run python tests/fetch_timm_tests.py")
        spec = importlib.util.spec_from_file_location("timm_test_models", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # not fetched (an offline machine): the suite cannot be had
        if REQUIRED:
            raise
        pytest.skip(f"timm's test suite is unavailable here: {e}")

    def cfg_value(name, key):
        return zoo.pretrained_cfg(zoo.get_variant(name)).get(key)

    module.create_model = mambaout.create_model
    module.get_pretrained_cfg_value = cfg_value
    return module


MODELS = mambaout.list_models()
SMALL = ["mambaout_test", "mambaout_femto", "mambaout_tiny", "mambaout_small_rw"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_timm_default_cfgs(suite, name):
    if mambaout.VARIANTS[name].builder == "vit":
        # timm holds its ViTs to the checks of models without a 4-D feature map.
        suite.test_model_default_cfgs_non_std(name, 1, "meta")
    else:
        suite.test_model_default_cfgs(name, 1, "meta")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_timm_forward(suite, name):
    suite.test_model_forward(name, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_timm_backward(suite, name):
    suite.test_model_backward(name, 2)


@pytest.mark.parametrize("name", SMALL)
def test_timm_features(suite, name):
    suite.test_model_forward_features(name, 1)
    suite.test_model_forward_intermediates_features(name, 1)
    suite.test_model_forward_intermediates(name, 1)


FX_SMALL = SMALL + ["mambaout_test_ssm", "mambaout_test_attn", "mambaout_test_causal_attn"]


@pytest.mark.parametrize("name", FX_SMALL)
def test_timm_fx(suite, name):
    # timm's FX feature extraction (its leaf modules and wrapped functions) on our model: forward against eager,
    # and a backward reaching every parameter
    suite.test_model_forward_fx(name, 1)
    suite.test_model_backward_fx(name, 2)
