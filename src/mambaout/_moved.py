"""The module paths from before the package was split into folders (``mambaout.train``, ``mambaout.predict``,
``mambaout.models.ssm``, ...) stay importable for scripts written against them. Each old name is the new module
itself, one object, so a setting or a patch applied through either name applies to both."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "mambaout.analysis": "mambaout.lab.analysis",
    "mambaout.argtypes": "mambaout.cli.argtypes",
    "mambaout.bench": "mambaout.infer.bench",
    "mambaout.checkpoint": "mambaout.engine.checkpoint",
    "mambaout.compare": "mambaout.lab.compare",
    "mambaout.complexity": "mambaout.models.complexity",
    "mambaout.config": "mambaout.classify.config",
    "mambaout.datasets": "mambaout.data.digits",
    "mambaout.demo": "mambaout.infer.demo",
    "mambaout.dense.cli": "mambaout.cli.dense",
    "mambaout.dense.engine": "mambaout.dense.train",
    "mambaout.distributed": "mambaout.engine.distributed",
    "mambaout.evaluate": "mambaout.infer.evaluate",
    "mambaout.export": "mambaout.infer.export",
    "mambaout.fast": "mambaout.models.fast",
    "mambaout.interrupt": "mambaout.engine.signals",
    "mambaout.metrics_log": "mambaout.engine.metrics_log",
    "mambaout.models.attention": "mambaout.models.mixers.attention",
    "mambaout.models.scan": "mambaout.models.mixers.scan",
    "mambaout.models.ssm": "mambaout.models.mixers.ssm",
    "mambaout.predict": "mambaout.infer.predict",
    "mambaout.safe_data": "mambaout.data.safe",
    "mambaout.train": "mambaout.classify.train",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # importlib overwrites __spec__ with the alias's; put it back below
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state  # already executed under its new name


if not any(isinstance(f, _OldNames) for f in sys.meta_path):
    sys.meta_path.append(_OldNames())
