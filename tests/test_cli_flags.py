"""The training flags generated from the config dataclasses: one per documented setting, its real default in its
help, defaults < recipe < flags, ``off`` words, errors naming the flag; and the command line's layering (only
``mambaout.cli`` builds parsers)."""
import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import mambaout
from mambaout.classify.config import ConfigError, TrainConfig
from mambaout.cli import build_parser
from mambaout.cli.flags import config_from_flags
from mambaout.cli.train import train_config
from mambaout.dense.config import DetectConfig, SegmentConfig

COMMANDS = {("train",): TrainConfig, ("detect", "train"): DetectConfig, ("segment", "train"): SegmentConfig}

# The flags each command had before they were generated: every one must still be there, spelled the same.
COMMON = ["--model", "--data-dir", "--output", "--recipe", "--batch-size", "--global-batch-size", "--lr",
          "--weight-decay", "--drop-path", "--num-classes", "--checkpoint", "--resume", "--amp", "--clip-grad",
          "--workers", "--seed", "--device", "--stop-after", "--log-interval", "--nonfinite", "--pretrained",
          "--grad-checkpointing", "--strict-data", "--print-config", "--debug"]
BEFORE = {
    ("train",): COMMON + ["--epochs", "--warmup-epochs", "--min-lr", "--img-size", "--smoothing", "--mixup",
                          "--cutmix", "--auto-augment", "--reprob", "--ema-decay", "--ema", "--compile",
                          "--channels-last"],
    ("detect", "train"): COMMON + ["--warmup-iters", "--frozen-stages", "--eval-interval", "--epochs", "--min-size",
                                   "--max-size", "--train-split", "--val-split"],
    ("segment", "train"): COMMON + ["--warmup-iters", "--frozen-stages", "--eval-interval", "--iters",
                                    "--crop-size", "--eval-mode"],
}


def subparser(*names) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def parse(*argv) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


def expected_default(f: dataclasses.Field) -> str | None:
    """What the help must show as the default: the dataclass's own value (None: its ``unset`` text)."""
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(value, bool):
        return None
    if value is None:
        return f.metadata.get("unset")
    if value == "":
        return None
    if isinstance(value, tuple):  # a tuple setting takes one value per item on the command line
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


@pytest.mark.parametrize("names", list(COMMANDS), ids=" ".join)
def test_every_documented_setting_is_a_flag_showing_its_real_default(names):
    cls = COMMANDS[names]
    actions = {a.dest: a for a in subparser(*names)._actions}
    documented = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    assert len(documented) >= 25
    for f in documented:
        action = actions[f.name]
        assert action.option_strings == [f.metadata.get("flag") or "--" + f.name.replace("_", "-")]
        assert action.default is None, f.name  # "not given": the recipe and the dataclass decide
        help_text = action.help.replace("%%", "%")
        assert help_text.startswith(f.metadata["help"].replace("{unit}", cls.unit)), f.name
        shown = expected_default(f)
        if shown is None:
            assert "(default:" not in help_text[len(f.metadata["help"]):], (f.name, help_text)
        else:
            assert help_text.endswith(f"(default: {shown})"), (f.name, help_text)
    undocumented = {f.name for f in dataclasses.fields(cls)} - {f.name for f in documented}
    assert not undocumented & set(actions), "a flag without help metadata"


@pytest.mark.parametrize("names", list(COMMANDS), ids=" ".join)
def test_no_flag_of_before_is_lost(names):
    options = {s for a in subparser(*names)._actions for s in a.option_strings}
    assert set(BEFORE[names]) <= options, set(BEFORE[names]) - options


def test_unit_is_the_commands_own():
    train = {a.dest: a.help for a in subparser("train")._actions}
    detect = {a.dest: a.help for a in subparser("detect", "train")._actions}
    assert "epochs" in train["stop_after"] and "iterations" in detect["stop_after"]
    assert "{unit}" not in train["stop_after"] + detect["stop_after"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 7\nwarmup_epochs: 1\nlr: 0.002\nauto_augment: rand-m7-mstd0.5\nbatch_size: 5\n")
    return str(path)


def test_defaults_then_recipe_then_flags(recipe):
    args = parse("train", "--recipe", recipe, "--epochs", "3", "--ema")
    cfg = train_config(args)
    assert cfg.epochs == 3  # the flag over the recipe
    assert cfg.lr == 0.002 and cfg.batch_size == 5  # the recipe over the defaults
    assert cfg.min_lr == TrainConfig.min_lr and cfg.ema is True and cfg.compile is False  # the defaults
    assert cfg.recipe == recipe


def test_dense_defaults_then_recipe_then_flags(tmp_path):
    path = tmp_path / "dense.yaml"
    path.write_text("lr: 0.003\ncrop_size: 256\nworkers: 0\neval_stride: 96\n")
    args = parse("segment", "train", "--recipe", str(path), "--crop-size", "128", "--frozen-stages", "1")
    cfg = config_from_flags(args, SegmentConfig)
    assert (cfg.crop_size, cfg.frozen_stages) == (128, 1)
    assert (cfg.lr, cfg.workers) == (0.003, 0)
    assert cfg.iters == SegmentConfig.iters and cfg.eval_mode == SegmentConfig.eval_mode == "whole"


def test_the_models_recipe_is_the_default_recipe():
    cfg = train_config(parse("train", "--model", "mambaout_femto"))
    assert cfg.recipe == "mambaout_femto" and cfg.model == "mambaout_femto"
    assert train_config(parse("train", "--model", "mambaout_test")).recipe is None  # no recipe of that name
    assert train_config(parse("train", "--model", "mambaout_femto", "--recipe", "quickstart")).recipe == \
        "quickstart"


def test_off_word_clears_the_setting(recipe):
    assert train_config(parse("train", "--recipe", recipe)).auto_augment == "rand-m7-mstd0.5"
    assert train_config(parse("train", "--recipe", recipe, "--auto-augment", "none")).auto_augment is None
    assert train_config(parse("train", "--auto-augment", "none")).auto_augment is None
    assert train_config(parse("train")).auto_augment == TrainConfig.auto_augment
    assert train_config(parse("train", "--auto-augment", "rand-m5")).auto_augment == "rand-m5"


def test_tuple_and_switch_flags_from_annotations():
    args = parse("detect", "train", "--pretrained", "--min-size", "64", "--max-size", "96")
    cfg = config_from_flags(args, DetectConfig)
    assert cfg.pretrained is True and (cfg.min_size, cfg.max_size) == (64, 96)
    assert config_from_flags(parse("detect", "train"), DetectConfig).pretrained is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detect", "train", "--min-size", "abc"])


@pytest.mark.parametrize("argv,cls,needles", [
    (["train", "--epochs", "0"], TrainConfig, ["'epochs' must be a positive number", "(--epochs)"]),
    (["train", "--warmup-epochs", "9", "--epochs", "3"], TrainConfig, ["'warmup_epochs'", "(--warmup-epochs)"]),
    (["detect", "train", "--batch-size", "-3"], DetectConfig, ["'batch_size'", "(--batch-size)"]),
    (["segment", "train", "--eval-mode", "fancy"], SegmentConfig, ["'eval_mode' must be whole or slide",
                                                                   "(--eval-mode)"]),
])
def test_a_bad_value_is_one_line_naming_setting_and_flag(argv, cls, needles):
    args = build_parser().parse_args(argv)
    with pytest.raises(ConfigError) as e:
        config_from_flags(args, cls)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_a_setting_without_a_flag_is_not_given_a_flag_name(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("eval_stride: 0\n")
    with pytest.raises(ConfigError) as e:
        config_from_flags(parse("segment", "train", "--recipe", str(path)), SegmentConfig)
    assert "'eval_stride'" in str(e.value) and "(--" not in str(e.value)


def test_only_the_command_line_imports_argparse():
    root = Path(mambaout.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "argparse" or n.startswith("argparse.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_one_table_layout_and_one_missing_package_message():
    from mambaout.utils.optional import missing_message, missing_package
    from mambaout.utils.tables import markdown_table, text_table

    assert text_table([["a", "bbb"], ["cc", "-"]], ["x", "y"], indent="  ") == [
        "  x   y", "  --  ---", "  a   bbb", "  cc  -"]
    assert markdown_table(["a", "b"], [["1", "2"]], align="lr") == "| a | b |\n|---|---:|\n| 1 | 2 |\n"
    assert missing_message("onnxruntime") == "this needs the 'onnxruntime' package: pip install 'mambaout[export]'"
    assert missing_message("sklearn", why="the data") == \
        "the data needs the 'scikit-learn' package: pip install 'mambaout[train]'"
    err = ModuleNotFoundError("No module named 'gradio'", name="gradio")
    assert str(missing_package(err)) == "this needs the 'gradio' package: pip install 'mambaout[demo]'"
    assert missing_package(ModuleNotFoundError("x", name="numpy")) is None
