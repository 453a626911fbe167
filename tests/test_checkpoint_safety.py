"""Untrusted checkpoint files: a pickle built to run code is refused by every reader, and exported weights
default to safetensors, which holds no code at all."""
import contextlib
import io
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import free_port, write_small_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open

from mambaout import CheckpointError, create_model, read_checkpoint
from mambaout.cli import main
from mambaout.models import model_from_source

CLASSES = ["cat", "dog"]


class Payload:
    """Unpickling this object writes ``marker``: what an attacker's checkpoint would do with a real command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def small_state():
    torch.manual_seed(0)
    return create_model("mambaout_test", num_classes=len(CLASSES)).state_dict()


def write_evil(path, marker, layout):
    """A checkpoint that looks like a real one of this package but carries the payload.

    zip: torch.save's format with the payload beside genuine weights; nested: hidden inside the state dict
    itself; legacy: a plain (pre-zip) pickle stream, which torch.load reads by another code path.
    """
    sd = small_state()
    if layout == "zip":
        torch.save({"model": sd, "model_name": "mambaout_test", "task": "detect", "optimizer": {},
                    "extra": Payload(marker)}, path)
    elif layout == "nested":
        torch.save({"model": {**sd, "head.fc.weight": Payload(marker)}, "model_name": "mambaout_test"}, path)
    else:
        path.write_bytes(pickle.dumps({"model_name": "mambaout_test", "x": Payload(marker)}, protocol=2))
    return path


LAYOUTS = ["zip", "nested", "legacy"]


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"

    def make(layout="zip", name="evil.pt"):
        return write_evil(tmp_path / name, marker, layout), marker

    return make


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_payload_really_runs_when_unpickled_unsafely(evil, layout):
    # The control: without the safe loader the file does run code, so every refusal below is meaningful.
    path, marker = evil(layout)
    with contextlib.suppress(RuntimeError):  # torch runs a bare pickle's code before finding it is no torch file
        torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def _demo_choices(path):
    from mambaout.infer.demo import choices_from_args

    return choices_from_args(None, [str(path)])


def _demo_pool(path):
    from mambaout.infer.demo import PredictorPool

    pool = PredictorPool({"evil": {"model_name": "mambaout_test", "checkpoint": str(path)}})
    return pool.get("evil")


def _predictor(path):
    from mambaout.infer.predict import Predictor

    return Predictor(checkpoint=path)


def _dense(path):
    from mambaout.dense.tasks import load_dense

    return load_dense(path, "detect")


def _dense_backbone(path):
    from mambaout.dense.backbone import MambaOutBackbone

    return MambaOutBackbone("mambaout_test", checkpoint_path=path)


READERS = {
    "read_checkpoint": read_checkpoint,
    "create_model": lambda p: create_model("mambaout_test", checkpoint_path=p),
    "create_model_more_classes": lambda p: create_model("mambaout_test", checkpoint_path=p, num_classes=5),
    "model_from_source": lambda p: model_from_source(None, checkpoint_path=p),
    "Predictor": _predictor,
    "demo_choices_from_args": _demo_choices,
    "demo_PredictorPool": _demo_pool,
    "load_dense": _dense,
    "dense_backbone": _dense_backbone,
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reader", list(READERS))
def test_every_library_reader_refuses_the_payload(evil, reader, layout):
    path, marker = evil(layout)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*(could run code|never loaded)"):
        READERS[reader](path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt", ".tar"])
def test_every_pickle_extension_is_read_safely(evil, suffix):
    path, marker = evil("zip", name=f"evil{suffix}")
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(path)
    assert not marker.exists()


def test_refusal_names_the_object_and_is_one_line(evil):
    path, _ = evil("zip")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert "names the Python object exec," in str(e.value) and "\n" not in str(e.value)


def test_poisoned_download_cache_is_refused(tmp_path, monkeypatch):
    # Someone who can write to the weights cache swaps a published file for a payload.
    from mambaout.models import DownloadError
    from mambaout.models.zoo import VARIANTS

    monkeypatch.setenv("MAMBAOUT_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    w = VARIANTS["mambaout_femto"].weights
    from pathlib import Path

    name = Path(w.url).name if w.url else w.hf_hub_id.replace("/", "--") + ".safetensors"
    dest = tmp_path / "cache" / "mambaout_femto" / name
    dest.parent.mkdir(parents=True)
    if dest.suffix == ".safetensors":
        pytest.skip("the published femto file is safetensors; a pickle payload cannot take its name")
    write_evil(dest, marker, "zip")
    with pytest.raises((CheckpointError, DownloadError)):
        create_model("mambaout_femto", pretrained=True)
    assert not marker.exists()


# -------------------------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The smallest inputs each command accepts, so the checkpoint is the only thing left to refuse."""
    root = tmp_path_factory.mktemp("untrusted-data")
    write_small_inputs(root, CLASSES)
    image = root / "folder" / "val" / "cat" / "0.png"
    # the demo checks its port before the checkpoint: an unprivileged, free one
    return {"folder": root / "folder", "coco": root / "coco", "ade": root / "ade", "image": image,
            "port": free_port()}


TRAIN = ["--model", "mambaout_test", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--img-size", "32",
         "--batch-size", "2"]
DENSE = ["--batch-size", "1", "--global-batch-size", "1", "--workers", "0"]
CLI_CASES = {
    "eval": lambda d, e, o: ["eval", "--checkpoint", e, "--data-dir", d["folder"] / "val", "--workers", "0"],
    "eval_named": lambda d, e, o: ["eval", "--model", "mambaout_test", "--checkpoint", e, "--data-dir",
                                   d["folder"] / "val", "--workers", "0"],
    "predict": lambda d, e, o: ["predict", d["image"], "--checkpoint", e],
    "predict_onnx": lambda d, e, o: ["predict", d["image"], "--model", "mambaout_test", "--checkpoint", e,
                                     "--backend", "onnx"],
    "export": lambda d, e, o: ["export", "--checkpoint", e, "--output", o / "m.safetensors"],
    "export_onnx": lambda d, e, o: ["export", "--model", "mambaout_test", "--checkpoint", e, "--format", "onnx",
                                    "--output", o / "m.onnx"],
    "train_checkpoint": lambda d, e, o: ["train", *TRAIN, "--data-dir", d["folder"], "--output", o,
                                         "--checkpoint", e],
    "train_resume": lambda d, e, o: ["train", *TRAIN, "--data-dir", d["folder"], "--output", o, "--resume", e],
    "detect_eval": lambda d, e, o: ["detect", "eval", "--checkpoint", e, "--data-dir", d["coco"], "--workers", "0"],
    "detect_predict": lambda d, e, o: ["detect", "predict", d["image"], "--checkpoint", e, "--output", o],
    "segment_eval": lambda d, e, o: ["segment", "eval", "--checkpoint", e, "--data-dir", d["ade"], "--workers", "0"],
    "segment_predict": lambda d, e, o: ["segment", "predict", d["image"], "--checkpoint", e, "--output", o],
    "detect_train_checkpoint": lambda d, e, o: ["detect", "train", "--recipe", "detect_quickstart", *DENSE,
                                                "--data-dir", d["coco"], "--output", o, "--checkpoint", e],
    "detect_train_resume": lambda d, e, o: ["detect", "train", "--recipe", "detect_quickstart", *DENSE,
                                            "--data-dir", d["coco"], "--output", o, "--resume", e],
    "segment_train_checkpoint": lambda d, e, o: ["segment", "train", "--recipe", "segment_quickstart", *DENSE,
                                                 "--data-dir", d["ade"], "--output", o, "--checkpoint", e],
    "segment_train_resume": lambda d, e, o: ["segment", "train", "--recipe", "segment_quickstart", *DENSE,
                                             "--data-dir", d["ade"], "--output", o, "--resume", e],
    "demo": lambda d, e, o: ["demo", "--checkpoint", e, "--port", str(d["port"])],
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_every_command_refuses_the_payload_with_one_line(case, data, evil, tmp_path, capsys, monkeypatch):
    def no_server(*args, **kwargs):
        raise AssertionError("the demo got as far as building its app")

    # a regression fails here instead of serving forever
    monkeypatch.setattr("mambaout.infer.demo.build_demo", no_server)
    path, marker = evil("zip")
    argv = [str(a) for a in CLI_CASES[case](data, path, tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusals; none is expected here
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "refusing to load" in lines[0] and str(path) in lines[0], err
    assert not marker.exists()


# --------------------------------------------------------------------------------- fuzzed checkpoint files
def _valid_pt() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}, "model_name": "mambaout_test", "step": 3}, buf)
    return buf.getvalue()


VALID_PT = _valid_pt()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID_PT) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(1, len(VALID_PT))))
def test_damaged_pt_files_give_checkpoint_error_only(tmp_path, edits, cut):
    raw = bytearray(VALID_PT)
    for i, b in edits:
        raw[i] = b
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(raw[:cut]))
    try:
        data = read_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(data, dict)  # a flip in padding or in a tensor's bytes can leave the file readable


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(st.binary(max_size=200), st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.integers() | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.text(max_size=4), c, max_size=3), max_leaves=6), max_size=4).map(lambda d: json.dumps(d).encode())),
       body=st.binary(max_size=64))
def test_malformed_safetensors_give_checkpoint_error_only(tmp_path, header, body):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    try:
        data = read_checkpoint(path)
    except CheckpointError:
        return
    assert isinstance(data, dict)


# ------------------------------------------------------------------------------------- safetensors exports
def trained_like(tmp_path, **model_args):
    """A checkpoint as 'mambaout train' writes it: weights, name, architecture arguments and preprocessing."""
    torch.manual_seed(1)
    model = create_model("mambaout_test", num_classes=len(CLASSES), **model_args)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
    cfg = {**model.pretrained_cfg, "input_size": [3, 48, 48], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
           "interpolation": "bilinear", "crop_pct": 0.9, "label_names": CLASSES}
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "model_args": model_args,
                "pretrained_cfg": cfg}, path)
    return path


def is_safetensors(path) -> bool:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[8:9] == b"{" and json.loads(raw[8:8 + n]) is not None


def test_export_defaults_to_safetensors_and_round_trips(tmp_path, capsys):
    ckpt = trained_like(tmp_path, drop_rate=0.25)
    out = tmp_path / "export" / "model.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(safetensors," in printed and "parity with PyTorch" in printed
    assert is_safetensors(out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["model_name"]) == "mambaout_test" and json.loads(meta["format"]) == "safetensors"

    original = model_from_source(None, checkpoint_path=ckpt).eval()
    # No --model needed: the file names its architecture, like a training checkpoint.
    rebuilt = model_from_source(None, checkpoint_path=out).eval()
    by_name = create_model("mambaout_test", checkpoint_path=out).eval()
    assert rebuilt.drop_rate == 0.25 and by_name.num_classes == len(CLASSES)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x)) and torch.equal(by_name(x), original(x))
    for key, want in (("input_size", (3, 48, 48)), ("mean", (0.5, 0.4, 0.3)), ("interpolation", "bilinear"),
                      ("crop_pct", 0.9), ("label_names", CLASSES)):
        got = rebuilt.pretrained_cfg[key]
        assert (tuple(got) if isinstance(got, list) and key != "label_names" else got) == want, key


def test_safetensors_export_predicts_like_the_checkpoint(tmp_path):
    from mambaout.infer.export import export_model
    from mambaout.infer.predict import Predictor

    ckpt = trained_like(tmp_path)
    model = model_from_source(None, checkpoint_path=ckpt)
    out = export_model(model, "safetensors", tmp_path / "m.safetensors", img_size=40)
    images = [Image.fromarray(np.random.default_rng(s).integers(0, 255, (70, 50, 3), dtype=np.uint8))
              for s in range(6)]
    exported = Predictor(checkpoint=out)
    assert exported.data_config["input_size"] == (3, 40, 40) and exported.labels == CLASSES
    # The checkpoint's own model, fed what the export's preprocessing makes of each image: the same logits, so
    # the same ranked labels and probabilities.
    original = create_model("mambaout_test", checkpoint_path=ckpt).eval()
    batch = torch.stack([exported.transform(img) for img in images])
    with torch.no_grad():
        probs = original(batch).softmax(-1)
    torch.testing.assert_close(exported.logits(images).softmax(-1), probs)
    for p, top in zip(probs, exported.predict(images, topk=2)):
        order = p.argsort(descending=True).tolist()
        assert [t["label"] for t in top] == [CLASSES[i] for i in order]
        assert [t["prob"] for t in top] == pytest.approx(p[order].tolist(), abs=1e-6)
    # ... and a checkpoint is not merely any model with these labels: another model's weights rank differently
    other = create_model("mambaout_test", num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        assert not torch.allclose(other(batch).softmax(-1), probs, atol=1e-3)


def test_other_formats_are_chosen_by_flag_or_onnx_extension(tmp_path, capsys):
    ckpt = trained_like(tmp_path)
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(onnx)]) == 0
    assert "(onnx," in capsys.readouterr().out and onnx.read_bytes()[:8] != b"PK\x03\x04"
    ts = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(ts)]) == 0
    assert "(torchscript," in capsys.readouterr().out and ts.read_bytes()[:4] == b"PK\x03\x04"


@pytest.mark.parametrize("argv,needle", [
    (["--output", "{tmp}/m.pt"], "files end in .safetensors"),
    (["--format", "safetensors", "--output", "{tmp}/m.bin"], "files end in .safetensors"),
    (["--format", "onnx", "--output", "{tmp}"], "is a folder"),
])
def test_export_names_a_bad_output(argv, needle, tmp_path, capsys):
    ckpt = trained_like(tmp_path)
    code = main(["export", "--checkpoint", str(ckpt), *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # nothing half-written


def test_safetensors_under_another_name_is_refused_by_the_api(tmp_path):
    from mambaout.infer.export import export_model

    with pytest.raises(ValueError, match=r"must be named \*\.safetensors"):
        export_model(create_model("mambaout_test"), "safetensors", tmp_path / "weights.pt")
    assert not (tmp_path / "weights.pt").exists()
