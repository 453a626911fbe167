"""The optional dependencies: which extra installs each, and one guard with one message for a missing one.

``require("onnx")`` returns the module or raises ``ImportError("this needs the 'onnx' package: pip install
'mambaout[export]'")``; ``why`` names what needs it ("the comparison plot needs ..."). :func:`missing_package`
rewords an ImportError raised by a plain ``import`` deep inside a command the same way, so the user reads one
message format whichever way a package turned out to be missing.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "gradio": ("gradio", "demo"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
    "pycocotools": ("pycocotools", "dense"),
    "skimage": ("scikit-image", "dense"),
    "matplotlib": ("matplotlib", "train"),
    "sklearn": ("scikit-learn", "train"),
    "tqdm": ("tqdm", "train"),
    "webdataset": ("webdataset", "shards"),
    "datasets": ("datasets", "hf"),
    "pytorch_grad_cam": ("grad-cam", "cam"),
}


def missing_message(module: str, extra: str | None = None, why: str = "this") -> str:
    """``"{why} needs the '{distribution}' package: pip install 'mambaout[{extra}]'"``."""
    root = module.split(".")[0]
    dist, known_extra = EXTRAS.get(root, (root, None))
    extra = extra or known_extra
    hint = f"pip install 'mambaout[{extra}]'" if extra else f"pip install {dist}"
    return f"{why} needs the '{dist}' package: {hint}"


def require(module: str, extra: str | None = None, why: str = "this") -> ModuleType:
    """``module`` imported, or an ImportError saying which package is missing and the pip command for it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(missing_message(module, extra, why)) from None


def missing_package(error: BaseException) -> ImportError | None:
    """The one-line ImportError for ``error`` if it is a missing optional package (see ``EXTRAS``), else None."""
    root = (getattr(error, "name", None) or "").split(".")[0]
    if isinstance(error, ModuleNotFoundError) and root in EXTRAS:
        return ImportError(missing_message(root))
    return None


__all__ = ["EXTRAS", "missing_message", "missing_package", "require"]
