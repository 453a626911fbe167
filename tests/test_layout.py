"""The tree shows the architecture: one folder per concern, dependencies pointing one way, functions short
enough to read, and the module paths from before the folders still importable."""
import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mambaout"

# Lower layers never import higher ones; a package may import its own modules and anything below it.
LAYERS = {"utils": 0, "models": 1, "data": 2, "engine": 3, "infer": 4, "classify": 5, "dense": 5, "lab": 6,
          "integrations": 6,
          "cli": 7}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        yield path, ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _imports(path: Path, name: str, is_pkg: bool):
    """Every mambaout module ``path`` imports (at the top or inside a function), as absolute names."""
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield from (f"{target}.{a.name}" for a in node.names) if not node.module else [target]
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] != "mambaout" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return parts[1], LAYERS[parts[1]]


def test_dependencies_point_one_way():
    wrong = []
    for path, name, is_pkg in _modules():
        here = _layer(name)
        if here is None:  # mambaout/__init__.py, __main__.py, _moved.py: the package's front door
            continue
        for target in _imports(path, name, is_pkg):
            there = _layer(target)
            if there and there[0] != here[0] and there[1] >= here[1]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layering " + str(LAYERS) + ":\n" + "\n".join(wrong)


def test_no_function_is_longer_than_a_screen():
    long = []
    for path, name, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_every_folder_is_a_documented_package():
    for folder in [p for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__") and p.name != "recipes"]:
        init = folder / "__init__.py"
        assert init.is_file(), folder
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} says what the folder holds"
    assert sorted(p.stem for p in SRC.glob("*.py")) == ["__init__", "__main__", "_moved"]


@pytest.mark.parametrize("old", sorted(importlib.import_module("mambaout._moved").MOVED))
def test_module_paths_from_before_the_folders_are_the_same_modules(old):
    from mambaout._moved import MOVED

    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]  # the alias leaves the real module's identity alone


def test_old_names_keep_their_public_contents():
    from mambaout.config import TrainConfig, resolve_config
    from mambaout.evaluate import evaluate_model, load_image_folder
    from mambaout.predict import Predictor
    from mambaout.train import lr_at, param_groups, train

    assert resolve_config({}).model == TrainConfig().model
    assert all(callable(f) for f in (evaluate_model, load_image_folder, Predictor, lr_at, param_groups, train))


def test_the_readme_layout_names_every_folder_and_module():
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    missing = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.stem not in ("__init__", "__main__") and p.name not in layout]
    missing += [f"{d.name}/" for d in SRC.iterdir() if d.is_dir() and not d.name.startswith("__")
                and f"{d.name}/" not in layout]
    assert not missing, f"README's Layout does not name: {missing}"
