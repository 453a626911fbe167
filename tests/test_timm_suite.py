"""timm's own per-model tests (its tests/test_models.py), run against ``mambaout.create_model``.

The test file ships in timm's source distribution on PyPI; it is fetched once with pip into the cache (or read
from $TIMM_TESTS_DIR). timm's test functions are called unchanged, with the factory they use swapped for ours,
so every contract timm checks of its own models (forward, backward, grad checkpointing, default cfgs, classifier
reset, meta device, features, intermediates) is checked of ours.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

import mambaout
from mambaout.models import zoo

# CI (CI=true) must run the suite; elsewhere an offline machine skips it.
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("MAMBAOUT_REQUIRE_TIMM_TESTS") == "1"


def _fetch_timm_tests() -> Path:
    if os.environ.get("TIMM_TESTS_DIR"):
        return Path(os.environ["TIMM_TESTS_DIR"]) / "test_models.py"
    from mambaout.models.hub import cache_dir

    dest = cache_dir() / "timm-tests" / timm.__version__
    target = dest / "test_models.py"
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    f"timm=={timm.__version__}", "-d", str(dest)], check=True, capture_output=True, timeout=300)
    sdist = next(dest.glob("timm-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py"))
        target.write_bytes(tar.extractfile(member).read())
    return target


@pytest.fixture(scope="module")
def suite():
    try:
        path = _fetch_timm_tests()
        spec = importlib.util.spec_from_file_location("timm_test_models", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # offline machine: the suite cannot be had
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
