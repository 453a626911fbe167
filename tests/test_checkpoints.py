"""Loading published checkpoint layouts: parity with timm, wrappers, fine-tuning heads, and refusals."""
import io
import os
import pickle
import warnings

import pytest
import torch
from conftest import PAPER_MODELS, to_official_layout
from safetensors.torch import save_file

from mambaout import CheckpointError, create_model, read_checkpoint

X = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_match_timm_in_both_layouts(name, timm_models, tmp_path):
    ref = timm_models(name)
    sd = ref.state_dict()
    files = {
        "timm.safetensors": lambda p: save_file({k: v.contiguous() for k, v in sd.items()}, p),
        "timm.pth": lambda p: torch.save(sd, p),
        "official.pth": lambda p: torch.save(to_official_layout(sd), p),
        "official_wrapped.pth": lambda p: torch.save({"model": to_official_layout(sd)}, p),
    }
    with torch.no_grad():
        expected = ref(X)
    for fname, write in files.items():
        path = tmp_path / fname
        write(str(path))
        model = create_model(name, checkpoint_path=path).eval()
        with torch.no_grad():
            diff = (model(X) - expected).abs().max().item()
        assert diff < 1e-4, f"{name} from {fname}: max abs diff {diff}"


@pytest.mark.parametrize("prefix,wrapper,suffix", [
    ("module.", "state_dict", ".pth"),        # DDP
    ("_orig_mod.", "model", ".pth"),          # torch.compile
    ("_orig_mod.module.", None, ".pth"),      # compiled DDP
    ("_orig_mod.", None, ".safetensors"),     # a compiled model's state dict written with safetensors
])
def test_rw_series_and_prefixes_load(timm_models, tmp_path, prefix, wrapper, suffix):
    ref = timm_models("mambaout_small_rw")  # LayerScale, norm-first downsampling, the *_rw head
    sd = {prefix + k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, path)
    model = create_model("mambaout_small_rw", checkpoint_path=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X), rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # the plain path runs timm's ops: the same to the last bit
        assert torch.equal(model(X), ref(X))
    assert model.stages[1].blocks[0].ls.gamma.shape == (192,)


def test_official_mapping_is_idempotent(timm_models):
    from mambaout.models import convert_official

    sd = timm_models("mambaout_femto").state_dict()
    official = to_official_layout(sd)
    assert set(convert_official(official)) == set(sd)
    assert set(convert_official(sd)) == set(sd)


def test_other_num_classes_reinitialises_only_the_head(timm_models, tmp_path):
    ref = timm_models("mambaout_test")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match="1000 classes, model has 10"):
        model = create_model("mambaout_test", checkpoint_path=path, num_classes=10).eval()
    assert model.head.fc.out_features == 10
    torch.testing.assert_close(model.head.pre_logits.fc.weight, ref.head.pre_logits.fc.weight)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(X), pre_logits=True),
                                   ref.forward_head(ref.forward_features(X), pre_logits=True))
    # Without num_classes, the file's own class count is used and nothing is re-initialised.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert create_model("mambaout_test", checkpoint_path=path).num_classes == 1000


def test_wrong_architecture_names_keys_and_shapes(timm_models, tmp_path):
    path = tmp_path / "femto.pth"
    torch.save(timm_models("mambaout_femto").state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        create_model("mambaout_tiny", checkpoint_path=path)
    msg = str(e.value)
    assert "mambaout_tiny" in msg and "stem.conv1.weight: file (24, 3, 3, 3) vs model (48, 3, 3, 3)" in msg
    with pytest.raises(CheckpointError, match="missing in file stages.2.blocks.9"):
        create_model("mambaout_kobe", checkpoint_path=path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*could run code"):
        create_model("mambaout_test", checkpoint_path=path)
    # A raw pickle (not torch's zip format) is refused too.
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not marker.exists()


def test_truncated_and_empty_files(timm_models, tmp_path):
    buf = io.BytesIO()
    torch.save(timm_models("mambaout_test").state_dict(), buf)
    for suffix, data in ((".pth", buf.getvalue()), (".safetensors", None)):
        path = tmp_path / f"cut{suffix}"
        if data is None:
            full = tmp_path / "full.safetensors"
            save_file({k: v.contiguous() for k, v in timm_models("mambaout_test").state_dict().items()}, str(full))
            data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"cut{suffix} is corrupt or truncated"):
            create_model("mambaout_test", checkpoint_path=path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="unknown extension"):
        (tmp_path / "w.npz").write_bytes(b"x")
        read_checkpoint(tmp_path / "w.npz")


def test_own_checkpoint_rebuilds_architecture(tmp_path):
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=4, drop_rate=0.1).eval()
    path = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict(), "model_args": {"drop_rate": 0.1}, "step": 10}, path)
    loaded = create_model("mambaout_test", checkpoint_path=path).eval()
    assert loaded.num_classes == 4 and loaded.drop_rate == 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))
