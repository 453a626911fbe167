"""Every subcommand meets bad input (a wrong path, an unknown model, a bad number, a missing optional package)
with exit status 2 and one stderr line naming the problem; ``--debug`` adds the traceback. Configuration parsing
meets arbitrary settings and recipe files with ConfigError or a valid configuration, nothing else."""
import dataclasses
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import write_small_inputs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mambaout import create_model
from mambaout.classify.config import ConfigError, TrainConfig, resolve_config, validate
from mambaout.cli import main
from mambaout.dense.config import DetectConfig, SegmentConfig


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Inputs that are valid except for the one thing each case gets wrong."""
    root = tmp_path_factory.mktemp("reliability")
    write_small_inputs(root, ("cat", "dog"))
    model = create_model("mambaout_test", num_classes=2)
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test"}, root / "ckpt.pt")
    torch.save(model.state_dict(), root / "plain.pth")
    (root / "garbage.pt").write_bytes(b"garbage" * 10)
    (root / "garbage.onnx").write_bytes(b"garbage" * 10)
    (root / "notimg.png").write_text("hello, I am text")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("epochs: [1,\nlr: {")
    return {"tmp": root, "folder": root / "folder", "image": root / "folder" / "val" / "cat" / "0.png",
            "coco": root / "coco", "ade": root / "ade", "ckpt": root / "ckpt.pt", "plain": root / "plain.pth",
            "garbage": root / "garbage.pt", "garbage_onnx": root / "garbage.onnx", "notimg": root / "notimg.png",
            "empty": root / "empty", "bad_yaml": root / "bad.yaml"}


def run_main(argv, paths, capsys):
    argv = [a.format(**paths) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals end the parse with SystemExit(2)
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code, err, needle):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert lines[0].startswith("mambaout"), err


T = ["--model", "mambaout_test", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--img-size", "32",
     "--batch-size", "2", "--data-dir", "{folder}", "--output", "{tmp}/train"]
EVAL = ["eval", "--checkpoint", "{ckpt}", "--data-dir", "{folder}/val", "--workers", "0"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA device")

CASES = [
    # ---- unknown models
    (["info", "mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["train", "--model", "mambaout_huge", "--print-config"], "unknown model 'mambaout_huge'"),
    (["eval", "--model", "mambaout_huge", "--pretrained", "--data-dir", "{folder}"], "unknown model"),
    (["predict", "{image}", "--model", "mambaout_huge", "--pretrained"], "unknown model"),
    (["demo", "--model", "mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["export", "--model", "mambaout_huge", "--pretrained", "--output", "{tmp}/x.safetensors"], "unknown model"),
    (["bench", "--model", "mambaout_test,mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["analyze", "--model", "mambaout_huge"], "unknown model"),
    (["compare", "--models", "mambaout_huge"], "unknown model"),
    (["detect", "train", "--model", "mambaout_huge", "--print-config"], "unknown model"),
    (["segment", "train", "--model", "mambaout_huge", "--print-config"], "unknown model"),
    (["list", "nothing_*"], "no model matches"),
    (["list", "--format", "xml"], "invalid choice: 'xml'"),
    (["env", "--jsn"], "unrecognized arguments: --jsn"),
    (["frobnicate"], "invalid choice"),
    # ---- bad numbers and choices
    (["info", "mambaout_test", "--img-size", "-3"], "expected a positive whole number, got -3"),
    (["train", "--batch-size", "-3", "--print-config"], "'batch_size' must be a positive number"),
    (["train", "--img-size", "abc", "--print-config"], "--img-size: invalid int value: 'abc'"),
    (["train", "--epochs", "0", "--print-config"], "'epochs' must be a positive number"),
    (["train", "--img-size", "8", "--print-config"], "'img_size' must be at least 32"),
    (["train", "--lr", "-1", "--print-config"], "'lr' must be a positive number"),
    (["train", "--amp", "fp8", "--print-config"], "'amp' must be one of"),
    ([*EVAL, "--batch-size", "-3"], "--batch-size: expected a positive whole number"),
    ([*EVAL, "--workers", "abc"], "--workers: invalid int value"),
    (["predict", "{image}", "--checkpoint", "{ckpt}", "--topk", "0"], "--topk"),
    (["predict", "{image}", "--checkpoint", "{ckpt}", "--batch-size", "abc"], "--batch-size"),
    (["predict", "{image}", "--checkpoint", "{ckpt}", "--device", "tpu"], "tpu"),
    (["demo", "--model", "mambaout_test", "--port", "70000"], "port must be in 1..65535"),
    (["demo", "--concurrency", "0"], "--concurrency"),
    (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/x.safetensors", "--img-size", "abc"], "--img-size"),
    (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/x.onnx", "--opset", "0"], "--opset"),
    (["bench", "--model", "mambaout_test", "--batch-size", "-3"], "--batch-size"),
    (["bench", "--model", "mambaout_test", "--runs", "0"], "--runs"),
    (["bench", "--model", "mambaout_test", "--amp", "fp16", "--device", "cpu"], "needs a CUDA device"),
    (["analyze", "--img-size", "1", "2", "3"], "--img-size takes H W or one side"),
    (["analyze", "--dim", "0"], "--dim"),
    (["compare", "--epochs", "0"], "--epochs"),
    (["compare", "--img-size", "abc"], "--img-size"),
    (["prepare-digits", "{tmp}/digits", "--size", "0"], "--size"),
    (["prepare-shapes", "{tmp}/shapes", "--layout", "coco", "--train", "0"], "--train"),
    (["prepare-shapes", "{tmp}/shapes", "--layout", "voc"], "invalid choice: 'voc'"),
    (["detect", "train", "--epochs", "0", "--print-config"], "--epochs"),
    (["detect", "train", "--batch-size", "-3", "--print-config"], "--batch-size"),
    (["detect", "train", "--lr", "-1", "--print-config"], "'lr' must be a positive number"),
    (["detect", "eval", "--checkpoint", "{ckpt}", "--data-dir", "{coco}", "--batch-size", "0"], "--batch-size"),
    (["detect", "predict", "{image}", "--checkpoint", "{ckpt}", "--score-threshold", "abc"], "--score-threshold"),
    (["detect", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["segment", "train", "--iters", "0", "--print-config"], "--iters"),
    (["segment", "train", "--crop-size", "abc", "--print-config"], "--crop-size"),
    (["segment", "train", "--eval-mode", "fancy", "--print-config"], "'eval_mode' must be whole or slide"),
    (["segment", "predict", "{image}", "--checkpoint", "{ckpt}", "--alpha", "abc"], "--alpha"),
    # ---- wrong paths and wrong files
    (["train", "--recipe", "{tmp}/missing.yaml", "--print-config"], "recipe file not found"),
    (["train", "--recipe", "nosuchrecipe", "--print-config"], "unknown recipe 'nosuchrecipe'"),
    (["train", *T[:-4], "--data-dir", "{tmp}/missing", "--output", "{tmp}/train"], "data folder not found"),
    (["train", *T, "--resume", "{tmp}/missing.pt"], "checkpoint not found"),
    (["train", *T, "--checkpoint", "{garbage}"], "corrupt or not a plain weights file"),
    (["eval", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{folder}/val"], "checkpoint not found"),
    (["eval", "--checkpoint", "{ckpt}", "--data-dir", "{tmp}/missing"], "data folder not found"),
    (["eval", "--checkpoint", "{notimg}", "--data-dir", "{folder}/val"], "unknown extension '.png'"),
    (["eval", "--checkpoint", "{plain}", "--data-dir", "{folder}/val"], "does not record its model"),
    (["eval", "--model", "mambaout_femto", "--checkpoint", "{ckpt}", "--data-dir", "{folder}/val"],
     "does not fit mambaout_femto"),
    (["predict", "{image}", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    (["predict", "{image}", "--checkpoint", "{tmp}/missing.onnx"], "not found"),
    (["predict", "{image}", "--checkpoint", "{garbage_onnx}"], "onnxruntime cannot load"),
    (["predict", "{empty}", "--checkpoint", "{ckpt}"], "no image files found"),
    (["export", "--checkpoint", "{tmp}/missing.pt", "--output", "{tmp}/x.safetensors"], "checkpoint not found"),
    (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/x.pt"], "end in .safetensors"),
    (["export", "--checkpoint", "{ckpt}", "--format", "torchscript", "--output", "{tmp}"], "is a folder"),
    (["demo", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    (["demo", "--checkpoint", "{plain}"], "does not record its model"),
    (["analyze", "--plot", "{tmp}"], "is a folder"),
    (["compare", "--data-dir", "{tmp}/missing", "--epochs", "1", "--output", "{tmp}/cmp"], "data folder not found"),
    (["compare", "--recipe", "nosuchrecipe", "--epochs", "1", "--data-dir", "{folder}", "--output", "{tmp}/cmp"],
     "unknown recipe"),
    (["detect", "eval", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{coco}"], "checkpoint not found"),
    (["detect", "eval", "--checkpoint", "{ckpt}", "--data-dir", "{coco}"], "not a detector/segmenter"),
    (["detect", "predict", "{image}", "--checkpoint", "{garbage}"], "corrupt or not a plain weights file"),
    (["detect", "train", "--recipe", "detect_quickstart", "--data-dir", "{tmp}/missing"],
     "COCO annotation file not found"),
    (["detect", "train", "--recipe", "detect_quickstart", "--data-dir", "{ade}"], "COCO annotation file not found"),
    (["segment", "train", "--recipe", "segment_quickstart", "--data-dir", "{coco}"], "ADE20K folder(s) not found"),
    (["segment", "eval", "--checkpoint", "{ckpt}", "--data-dir", "{ade}"], "not a detector/segmenter"),
    (["segment", "predict", "{image}", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    pytest.param(["eval", "--checkpoint", "{ckpt}", "--data-dir", "{folder}/val", "--device", "cuda"],
                 "no CUDA device", marks=NO_CUDA),
    pytest.param(["train", *T, "--device", "cuda"], "no CUDA device", marks=NO_CUDA),
    # ---- errors from the command line's own layer: directories, missing inputs, recipes
    ([*EVAL, "--output", "{tmp}"], "Is a directory"),
    (["prepare-digits", "{notimg}"], "Not a directory"),
    (["predict", "{tmp}/missing.png", "--checkpoint", "{ckpt}"], "missing.png"),
    (["detect", "predict", "{tmp}/missing.png", "--checkpoint", "{ckpt}"], "missing.png"),
    (["train", "--recipe", "{bad_yaml}", "--print-config"], "not valid YAML"),
    (["train", *T, "--auto-augment", "bogus-spec"], "auto_augment"),
    (["train", *T, "--resume", "{ckpt}"], "--resume"),
]


@pytest.mark.parametrize("argv,needle", CASES)
def test_bad_input_exits_2_with_one_line(argv, needle, paths, capsys, monkeypatch):
    def no_server(*args, **kwargs):
        raise AssertionError("the demo got as far as building its app")

    # a regression fails here instead of serving forever
    monkeypatch.setattr("mambaout.infer.demo.build_demo", no_server)
    code, _, err = run_main(argv, paths, capsys)
    assert_one_line(code, err, needle)


def test_demo_on_a_taken_port_is_one_line_before_loading_models(paths, capsys, monkeypatch):
    import socket

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the port was checked")

    monkeypatch.setattr("mambaout.infer.demo.choices_from_args", no_models)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_main(["demo", "--checkpoint", "{ckpt}", "--port", str(port)], paths, capsys)
    assert_one_line(code, err, f"cannot listen on 127.0.0.1:{port}")


# ------------------------------------------------------------------------------- missing optional packages
def block(monkeypatch, *names):
    """Make ``import name`` (and its submodules) fail as if the package were not installed."""
    for name in names:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, key, None)
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("blocked,argv,needle", [
    ("gradio", ["demo", "--model", "mambaout_test"], "pip install 'mambaout[demo]'"),
    ("gradio", ["demo", "--checkpoint", "{ckpt}"], "pip install 'mambaout[demo]'"),
    ("onnx", ["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/x.onnx"], "pip install 'mambaout[export]'"),
    ("onnxruntime", ["predict", "{image}", "--checkpoint", "{ckpt}", "--backend", "onnx"],
     "the 'onnxruntime' package"),
    ("openvino", ["predict", "{image}", "--checkpoint", "{ckpt}", "--backend", "openvino"],
     "pip install 'mambaout[openvino]'"),
    ("onnxruntime", ["bench", "--model", "mambaout_test", "--backend", "onnx"], "the 'onnxruntime' package"),
    ("matplotlib", ["analyze", "--plot", "{tmp}/r.png"], "pip install 'mambaout[train]'"),
    ("matplotlib", ["compare", "--data-dir", "{folder}", "--epochs", "1", "--output", "{tmp}/cmp"],
     "the 'matplotlib' package"),
    ("sklearn", ["compare", "--epochs", "1", "--output", "{tmp}/cmp2"], "the 'scikit-learn' package"),
    ("sklearn", ["prepare-digits", "{tmp}/digits"], "pip install 'mambaout[train]'"),
    ("pycocotools", ["prepare-shapes", "{tmp}/shapes", "--layout", "coco", "--train", "1",
                                         "--val", "1"], "pip install 'mambaout[dense]'"),
    ("pycocotools", ["detect", "train", "--recipe", "detect_quickstart", "--data-dir", "{coco}"],
            "pip install 'mambaout[dense]'"),
])
def test_missing_optional_package_is_one_line(blocked, argv, needle, paths, capsys, monkeypatch):
    block(monkeypatch, blocked)
    code, _, err = run_main(argv, paths, capsys)
    assert_one_line(code, err, needle)


# None in sys.modules is Python's own "not importable" mark: `import x` raises ModuleNotFoundError and
# importlib.util.find_spec("x") answers None, as for a package that is not installed (torch probes some that way).
SHIM = textwrap.dedent('''
    import os, sys

    for _name in filter(None, os.environ.get("MAMBAOUT_TEST_BLOCK", "").split(",")):
        sys.modules[_name] = None
''')


def run_cli(args, paths, block_modules=(), timeout=300):
    """``python -m mambaout`` in a fresh process; ``block_modules`` look uninstalled to it (a sitecustomize)."""
    env = dict(os.environ)
    if block_modules:
        shim = paths["tmp"] / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(SHIM)
        env["PYTHONPATH"] = os.pathsep.join([str(shim), *filter(None, [env.get("PYTHONPATH")])])
        env["MAMBAOUT_TEST_BLOCK"] = ",".join(block_modules)
    argv = [a.format(**paths) for a in args]
    return subprocess.run([sys.executable, "-m", "mambaout", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("blocked,argv,needle", [
    ("gradio", ["demo", "--model", "mambaout_test"], "pip install 'mambaout[demo]'"),
    ("onnxruntime", ["predict", "{image}", "--checkpoint", "{ckpt}", "--backend", "onnx"],
     "the 'onnxruntime' package"),
    ("openvino", ["predict", "{image}", "--checkpoint", "{ckpt}", "--backend", "openvino"],
     "pip install 'mambaout[openvino]'"),
    ("pycocotools", ["detect", "train", "--recipe", "detect_quickstart", "--data-dir", "{coco}",
                                         "--output", "{tmp}/det"], "pip install 'mambaout[dense]'"),
])
def test_missing_package_in_a_real_process(blocked, argv, needle, paths):
    r = run_cli(argv, paths, block_modules=[blocked])
    assert_one_line(r.returncode, r.stderr, needle)


def test_the_shim_really_hides_the_package(paths):
    # The control for the cases above: with the shim, the package cannot be imported at all.
    r = run_cli(["env", "--json"], paths)
    assert r.returncode == 0
    env = dict(os.environ, PYTHONPATH=str(paths["tmp"] / "shim"), MAMBAOUT_TEST_BLOCK="gradio")
    (paths["tmp"] / "shim").mkdir(exist_ok=True)
    (paths["tmp"] / "shim" / "sitecustomize.py").write_text(SHIM)
    r = subprocess.run([sys.executable, "-c", "import gradio"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr and "gradio" in r.stderr


# --------------------------------------------------------------------------------------------------- --debug
@pytest.mark.parametrize("argv", [
    ["eval", "--debug", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{folder}"],
    ["detect", "eval", "--debug", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{coco}"],
    ["detect", "--debug", "eval", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{coco}"],
    (["--debug", "eval", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{folder}"]),
])
def test_debug_shows_the_traceback(argv, paths, capsys):
    code, _, err = run_main(argv, paths, capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "checkpoint not found" in err.splitlines()[-1]


def test_real_process_one_line_then_traceback_with_debug(paths):
    args = ["eval", "--checkpoint", "{tmp}/missing.pt", "--data-dir", "{folder}"]
    plain = run_cli(args, paths)
    assert_one_line(plain.returncode, plain.stderr, "checkpoint not found")
    debug = run_cli([*args, "--debug"], paths)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


# ------------------------------------------------------------------------------------ configuration parsing
NUMBERS_AS_TEXT = ["1", "0", "-3", "2.5", "1e999", "nan", "inf", "true", "no", "", " 7 ", "none", "0x10", "1_000"]
# Beyond a float's range: numbers that overflow a float must still give ConfigError.
EXTREME = [10**400, -(10**400)]


def values(extreme: bool = False):
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
        st.sampled_from([2**63, 1e308, -0.0, *(EXTREME if extreme else [])]),
        st.sampled_from(NUMBERS_AS_TEXT + ["mambaout_test", "quickstart", "bf16", "slide", "auto", "cpu", "a\x00b"]),
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        | st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2), max_leaves=10)


CONFIG_CLASSES = [TrainConfig, DetectConfig, SegmentConfig]


def field_names(cls):
    return [f.name for f in dataclasses.fields(cls)]


def overrides_for(cls, extreme: bool = False):
    keys = st.sampled_from(field_names(cls)) | st.text(max_size=12)
    return st.dictionaries(keys, values(extreme), max_size=8)


def same(a, b) -> bool:
    """Equal, with NaN equal to itself (a NaN setting is a valid float that round-trips)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def check_resolves_or_config_error(overrides, cls, recipe=None):
    try:
        cfg = resolve_config(overrides, recipe=recipe, cls=cls)
    except ConfigError as e:
        assert str(e).strip()
        return None
    assert isinstance(cfg, cls)
    validate(cfg)
    for f in dataclasses.fields(cls):  # each value has its field's declared type
        v = getattr(cfg, f.name)
        kind = str(f.type).replace(" ", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if v is None and "None" in kind:
            continue
        if kind.startswith("bool"):
            assert isinstance(v, bool), f.name
        elif kind.startswith("int"):  # a whole number: no float, no inf or NaN standing in for one
            assert isinstance(v, int) and not isinstance(v, bool), (f.name, v)
        elif kind.startswith("float"):
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (f.name, v)
        elif isinstance(default, tuple):
            assert isinstance(v, tuple) and len(v) == len(default), f.name
    return cfg


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_arbitrary_overrides_resolve_or_raise_config_error(cls, data):
    overrides = data.draw(overrides_for(cls))
    overrides.pop("recipe", None)  # recipe names are a file lookup: covered below
    cfg = check_resolves_or_config_error(overrides, cls)
    if cfg is not None:  # what resolves, resolves again to itself (what is written into every checkpoint)
        again = resolve_config(cfg.to_dict(), cls=cls)
        assert all(same(getattr(again, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cls))


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("overrides", [
    ({"recipe": 5}),
    ({"recipe": ["quickstart"]}),
    ({"recipe": "x" * 5000}),
    ({"lr": 10**400}),
    ({"seed": 10**400, "lr": 10**400}),
    {"recipe": "a\x00b.yaml"},
    {"epochs": 1e308, "batch_size": float("inf")},
])
def test_known_bad_overrides_raise_config_error(cls, overrides):
    with pytest.raises(ConfigError) as e:
        resolve_config(overrides, cls=cls)
    assert str(e.value).strip() and "\n" not in str(e.value)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_arbitrary_overrides_with_recipes_and_extreme_numbers(cls, data):
    check_resolves_or_config_error(data.draw(overrides_for(cls, extreme=True)), cls)


RECIPE_TEXT = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.dictionaries(st.sampled_from(field_names(DetectConfig) + field_names(SegmentConfig) + field_names(TrainConfig))
                    | st.text(max_size=8) | st.integers() | st.booleans(), values(), max_size=8)
    .map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
    st.sampled_from([b"- 1\n- 2\n", b"just text", b"{a: [1,", b"\xff\xfe\x00\x01", b"epochs: !!python/name:os.system\n",
                     b"!!python/object/apply:os.system ['true']\n", b"epochs: &a [*a]\n", b"? [1, 2]\n: 3\n"]),
)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=RECIPE_TEXT)
@example(content=b"\xff\xfe\x00\x01")
@example(content=b"epochs: [1,\nlr: {")
def test_any_recipe_file_resolves_or_raises_one_line_config_error(cls, content, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    try:
        resolve_config({}, recipe=str(recipe), cls=cls)
    except ConfigError as e:
        assert "\n" not in str(e), str(e)  # printed as the CLI's one error line


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=RECIPE_TEXT.filter(lambda b: _decodes(b)))
def test_text_recipe_files_resolve_or_raise_config_error(cls, content, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    check_resolves_or_config_error({}, cls, recipe=str(recipe))


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_a_recipe_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config({}, recipe=str(recipe))
    recipe.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        resolve_config({}, recipe=str(recipe))
    assert not marker.exists()
