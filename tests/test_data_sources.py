"""The three data sources (ImageFolder, WebDataset shards, hf:PATH): prepare-shards, equal steps on every rank,
exact resume inside an epoch, each evaluation image once, corrupt samples and shards skipped and named, one-line
errors, and training from each source."""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import cli_in_process, digits_subset
from test_train import _quickstart_steps
from torch.utils.data import DataLoader

import mambaout
from mambaout.classify.config import resolve_config
from mambaout.classify.train import train
from mambaout.data.convert import parse_shard_size, write_shards
from mambaout.data.safe import BadSampleWarning, DataFileError
from mambaout.data.shards import ShardStream, deal, open_shards
from mambaout.data.sources import build_loader, open_data, source_kind
from mambaout.engine.distributed import DistInfo
from mambaout.models import read_checkpoint

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def quarter(digits, tmp_path_factory):
    """36 train / 9 val images per class."""
    return digits_subset(digits, tmp_path_factory.mktemp("quarter"), 36, 9)


@pytest.fixture(scope="module")
def shards(quarter, tmp_path_factory):
    """The quarter digits as shards of 100 images: 4 train shards of uneven size (100, 100, 100, 60), one val."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(str(quarter), out, shard_size="100", progress=False)
    return out


def _to_tensor():
    from torchvision import transforms

    return transforms.Compose([transforms.RandomResizedCrop(16, scale=(0.3, 1.0)), transforms.ToTensor()])


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


# ------------------------------------------------------------------------------------------- prepare-shards
def test_prepare_shards_writes_shuffled_shards_of_the_original_bytes(quarter, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = cli_in_process(["prepare-shards", quarter, out, "--shard-size", "100"], capsys)
    assert code == 0, err
    assert "train: 360 images in 4 shard(s)" in stdout and "val: 90 images in 1 shard(s)" in stdout
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["shard_lengths"] == [100, 100, 100, 60]
    assert info["splits"]["train"]["filenames"] == [f"train-00000{i}.tar" for i in range(4)]
    classes = (out / "classes.txt").read_text().split()
    assert classes == sorted(p.name for p in (quarter / "train").iterdir())
    sources = []
    for name in info["splits"]["train"]["filenames"]:
        members = _members(out / name)
        keys = sorted({m.split(".")[0] for m in members})
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            source = meta["source"]
            assert members[f"{key}.png"] == open(source, "rb").read(), "the original bytes, not re-encoded"
            assert int(members[f"{key}.cls"]) == meta["label"] == classes.index(os.path.basename(
                os.path.dirname(source)))
            sources.append(source)
    assert len(sources) == len(set(sources)) == 360
    assert sources != sorted(sources), "shuffled"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no working folder left behind"


def test_shard_size_by_bytes(quarter, tmp_path):
    info = write_shards(str(quarter / "val"), tmp_path / "o", shard_size="20KB", progress=False)
    files = [tmp_path / "o" / f for f in info["splits"]["val"]["filenames"]]
    assert len(files) > 2 and sum(info["splits"]["val"]["shard_lengths"]) == 90, "a folder named val: val-*.tar"
    for f in files[:-1]:  # a shard closes once its payload reaches the size: within one sample of it
        payload = [len(v) for v in _members(f).values()]
        assert 20_000 <= sum(payload) <= 20_000 + max(payload) * 3


@pytest.mark.parametrize("text,expected", [("1000", (1000, None)), ("200MB", (None, 200e6)), ("1.5GB", (None, 1.5e9)),
                                           ("64kb", (None, 64e3))])
def test_parse_shard_size(text, expected):
    assert parse_shard_size(text) == expected


@pytest.mark.parametrize("args,needle", [
    (["--shard-size", "lots"], "--shard-size 'lots': give a number of images"),
    (["--shard-size", "0"], "--shard-size '0'"),
])
def test_prepare_shards_bad_flags_one_line(args, needle, quarter, tmp_path, capsys):
    code, _, err = cli_in_process(["prepare-shards", quarter, tmp_path / "o", *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_prepare_shards_refuses_to_overwrite(shards, quarter, capsys):
    before = sorted(p.name for p in shards.iterdir())
    code, _, err = cli_in_process(["prepare-shards", quarter, shards], capsys)
    assert code == 2 and "already holds shards" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in shards.iterdir()) == before


def test_prepare_shards_leaves_out_an_unreadable_image(quarter, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(quarter / "val", src)
    bad = src / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.warns(BadSampleWarning, match=str(bad)):
        code, stdout, err = cli_in_process(["prepare-shards", src, tmp_path / "o"], capsys)
    assert code == 0, err
    assert "train: 90 images" in stdout and "left out 1 unreadable image(s)" in stdout
    assert (tmp_path / "o" / "train-000000.tar").is_file()
    code, _, err = cli_in_process(["prepare-shards", src, tmp_path / "o2", "--strict-data"], capsys)
    assert code != 0 and str(bad) in err and not list((tmp_path / "o2").glob("*.tar"))


# ------------------------------------------------------------------------------------------- dealing, ranks
def test_deal_balances_whole_shards_or_interleaved_pieces():
    dealt = deal([100, 100, 100, 60], 2)
    assert sorted(sum(p.count for p in s) for s in dealt) == [160, 200]
    assert all(p.parts == 1 for s in dealt for p in s)
    dealt = deal([100, 60], 4)  # fewer shards than slots: every other sample of each shard
    assert sum(p.count for s in dealt for p in s) == 160 and all(s for s in dealt)
    assert {(p.file, p.part, p.parts) for s in dealt for p in s} == {(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)}


@pytest.mark.parametrize("world,workers", [(2, 0), (2, 2), (3, 1), (2, 3)])
def test_every_rank_yields_exactly_its_batches(shards, world, workers):
    """Uneven shards (100, 100, 100, 60): every rank gives exactly steps × accumulation batches, no fewer (its
    DDP peers would wait forever) and no more."""
    stream = ShardStream(open_shards(str(shards / "train-*.tar")), _to_tensor(), train=True, seed=3,
                         shuffle_buffer=50)
    batches = len(stream) // world // 16
    for rank in range(world):
        stream.configure(rank, world, workers, 16, batches=batches)
        got = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(got) == batches and all(b[0].shape == (16, 3, 16, 16) for b in got)


def test_training_ranks_read_disjoint_shards(shards):
    stream = ShardStream(open_shards(str(shards / "train-*.tar")), train=True, seed=0)
    stream.configure(0, 2, 2, 8)
    dealt = stream._dealt()
    files = [{p.file for p in slot} for slot in dealt]
    assert all(len(f) for f in files) and sum(len(f) for f in files) == 4, "each shard to one reader"
    stream.set_epoch(1)
    assert stream._dealt() != dealt, "the deal changes with the epoch"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_inside_an_epoch_gives_the_batches_of_an_uninterrupted_run(shards, workers):
    stream = ShardStream(open_shards(str(shards / "train-*.tar")), _to_tensor(), train=True, seed=5,
                         shuffle_buffer=40)
    stream.set_epoch(2)
    stream.configure(1, 2, workers, 8, batches=20)
    straight = list(DataLoader(stream, batch_size=None, num_workers=workers))
    for skip in (3, 8):
        stream.configure(1, 2, workers, 8, batches=20, skip=skip)
        resumed = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(resumed) == 20 - skip
        for a, b in zip(straight[skip:], resumed):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_resume_with_other_workers_still_takes_the_remaining_steps(shards):
    """The stated approximation: another worker count deals the pieces anew, yet the epoch ends on time."""
    stream = ShardStream(open_shards(str(shards / "train-*.tar")), _to_tensor(), train=True, seed=5)
    stream.configure(0, 2, 3, 8, batches=20, skip=7)
    assert len(list(DataLoader(stream, batch_size=None, num_workers=3))) == 13


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_evaluation_reads_every_sample_once(shards, world, workers):
    stream = ShardStream(open_shards(str(shards / "*.tar")), train=False)
    keys, expected = [], 0
    for rank in range(world):
        stream.configure(rank, world, workers, 8)
        expected += stream.expected()
        for slot in range(rank * max(1, workers), (rank + 1) * max(1, workers)):
            keys += [(s["__url__"], s["__key__"]) for s in stream._samples(stream._dealt()[slot])]
    assert len(keys) == len(set(keys)) == expected == 450


def test_each_rank_expects_its_own_share_of_the_evaluation(shards):
    from mambaout.infer.evaluate import _expected_images

    stream, _ = open_data(str(shards / "*.tar"), "val")
    shares = [_expected_images(build_loader(stream, 8, 2, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert sum(shares) == 450 and max(shares) < 450, "skipped = expected - read must not count other ranks' images"


def test_eval_over_shards_counts_each_image_once(shards, quarter, tmp_path, capsys):
    cfg = resolve_config({"model": "mambaout_test", "data_dir": str(quarter), "output": str(tmp_path / "r"),
                          "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "workers": 0}, recipe="quickstart")
    train(cfg)
    results = []
    for spec, workers in ((str(quarter / "val"), 0), (str(shards / "val-*.tar"), 0), (str(shards / "val-*.tar"), 3)):
        code, _, err = cli_in_process(["eval", "--checkpoint", tmp_path / "r" / "last.pt", "--val-data", spec,
                                       "--workers", workers, "--output", tmp_path / "e.json"], capsys)
        assert code == 0, err
        results.append(json.loads((tmp_path / "e.json").read_text()))
    assert [r["images"] for r in results] == [90, 90, 90]
    assert results[1]["top1"] == results[2]["top1"] == pytest.approx(results[0]["top1"])


# ------------------------------------------------------------------------------------------- bad data
def _corrupt_copy(shards, dest):
    """The val shard with one sample's image replaced by garbage, and a train shard cut in half."""
    import webdataset as wds

    dest.mkdir()
    (dest / "classes.txt").write_text((shards / "classes.txt").read_text())
    members = _members(shards / "val-000000.tar")
    keys = sorted({m.split(".")[0] for m in members})
    with wds.TarWriter(str(dest / "val-000000.tar")) as w:
        for i, key in enumerate(keys):
            image = b"\x89PNG\r\n\x1a\nnot really" if i == 5 else members[f"{key}.png"]
            w.write({"__key__": key, "png": image, "cls": members[f"{key}.cls"]})
    data = (shards / "train-000001.tar").read_bytes()
    (dest / "cut-000000.tar").write_bytes(data[: len(data) // 2])
    index = {"splits": {"cut": {"name": "cut", "num_samples": 100, "filenames": ["cut-000000.tar"],
                                "shard_lengths": [100]}}}
    (dest / "_info.json").write_text(json.dumps(index))  # the count the shard had before it was cut
    return keys[5]


def test_a_corrupt_sample_and_a_cut_shard_are_skipped_and_named(shards, tmp_path, recwarn):
    bad_key = _corrupt_copy(shards, tmp_path / "bad")
    stream, _ = open_data(str(tmp_path / "bad" / "val-*.tar"), "val", _to_tensor())
    loader = build_loader(stream, 16, 0, DistInfo())
    assert sum(len(b[1]) for b in loader if b is not None) == 89
    cut, _ = open_data(str(tmp_path / "bad" / "cut-*.tar"), "val", _to_tensor())
    n = sum(len(b[1]) for b in build_loader(cut, 16, 0, DistInfo()) if b is not None)
    said = [str(w.message) for w in recwarn if issubclass(w.category, BadSampleWarning)]
    assert any(f"val-000000.tar:{bad_key}" in m for m in said), said
    assert any("cut-000000.tar" in m and "cut short" in m for m in said), said
    assert 0 < n < 100
    strict, _ = open_data(str(tmp_path / "bad" / "val-*.tar"), "val", _to_tensor(), strict=True)
    with pytest.raises(DataFileError, match=bad_key):
        list(build_loader(strict, 16, 0, DistInfo()))


@pytest.mark.parametrize("spec,needle", [
    ("{d}/nothing-{{000..003}}.tar", "shard not found: {d}/nothing-000.tar"),
    ("{d}/nothing-*.tar", "no shard file matches '{d}/nothing-*.tar'"),
    ("{d}/empty.tar", "hold no samples"),
])
def test_a_missing_or_empty_shard_spec_is_one_line(spec, needle, quarter, tmp_path, capsys):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    spec, needle = spec.format(d=tmp_path), needle.format(d=tmp_path)
    code, _, err = cli_in_process(["train", "--recipe", "quickstart", "--train-data", spec, "--val-data",
                                   quarter / "val", "--output", tmp_path / "o"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_train_data_without_val_data_is_one_line(shards, tmp_path, capsys):
    code, _, err = cli_in_process(["train", "--recipe", "quickstart", "--train-data", shards / "train-*.tar",
                                   "--output", tmp_path / "o"], capsys)
    assert code == 2 and "no validation data: give --val-data" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def hf_digits(quarter, tmp_path_factory):
    pytest.importorskip("datasets")
    from mambaout.data.digits import save_hf_dataset

    out = tmp_path_factory.mktemp("hf") / "digits"
    save_hf_dataset(quarter, out)
    return out


def test_hf_dataset_classes_splits_and_parquet(hf_digits, quarter, tmp_path):
    import datasets

    train_set, names = open_data(f"hf:{hf_digits}", "train")
    val_set, val_names = open_data(f"hf:{hf_digits}", "val")
    assert names == val_names == sorted(p.name for p in (quarter / "train").iterdir())
    assert (len(train_set), len(val_set)) == (360, 90)
    image, label = train_set[0]
    assert image.size == (32, 32) and 0 <= label < 10
    # The hub's layout: Parquet files named by split; the columns renamed, so they must be named.
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    dd = datasets.load_from_disk(str(hf_digits))
    for split, ds in dd.items():
        ds.rename_columns({"image": "picture", "label": "digit"}).to_parquet(str(folder / f"{split}-00000.parquet"))
    pq, pq_names = open_data(f"hf:{tmp_path / 'parquet'}", "val", image_column="picture", label_column="digit")
    assert len(pq) == 90 and pq_names == names
    assert list(pq[0][0].getdata()) == list(val_set[0][0].getdata())
    # Both kinds convert to shards, both splits at once.
    for src in (f"hf:{hf_digits}", f"hf:{tmp_path / 'parquet'}"):
        out = tmp_path / f"shards-{len(list(tmp_path.iterdir()))}"
        info = mambaout.write_shards(src, out, image_column="picture" if "parquet" in src else None,
                                     label_column="digit" if "parquet" in src else None, progress=False)
        assert {k: v["num_samples"] for k, v in info["splits"].items()} == {"train": 360, "val": 90}
        assert (out / "classes.txt").read_text().split() == names


def test_hf_bad_column_and_bad_row(hf_digits, tmp_path, capsys):
    code, _, err = cli_in_process(["train", "--recipe", "quickstart", "--train-data", f"hf:{hf_digits}",
                                   "--image-column", "photo", "--output", tmp_path / "o"], capsys)
    assert code == 2 and "no column 'photo' (--image-column); columns: image, label" in err, err
    import datasets

    ds = datasets.load_from_disk(str(hf_digits))["validation"]
    rows = ds.cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][4] = {"bytes": b"not an image", "path": None}
    datasets.Dataset.from_dict(rows, features=ds.features).save_to_disk(str(tmp_path / "bad"))
    images, _ = open_data(f"hf:{tmp_path / 'bad'}", "val")
    with pytest.warns(UserWarning, match=r"bad\[4\]"):
        assert images[4] is None
    assert source_kind(f"hf:{tmp_path}") == "hf" and source_kind(str(tmp_path / "a-{0..3}.tar")) == "shards"


# ------------------------------------------------------------------------------------------- training
def _cfg(out, **kw):
    base = dict(model="mambaout_test", output=str(out), epochs=2, warmup_epochs=1, batch_size=16, workers=0,
                drop_path=0.0, lr=2e-3, log_interval=1000, scale=(0.6, 1.0))
    return resolve_config({**base, **kw}, recipe="quickstart")


def test_hf_training_is_the_folder_training(quarter, hf_digits, tmp_path):
    """Same rows in the same order, the same bytes: the same weights."""
    a = train(_cfg(tmp_path / "folder", data_dir=str(quarter)))
    b = train(_cfg(tmp_path / "hf", train_data=f"hf:{hf_digits}"))
    wa, wb = (read_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("folder", "hf"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and a["top1"] == b["top1"]


@pytest.mark.slow
def test_shard_training_resumed_inside_an_epoch_matches_an_uninterrupted_run(shards, tmp_path, monkeypatch):
    from conftest import max_diff, on_loss_call

    kw = dict(train_data=str(shards / "train-*.tar"), val_data=str(shards / "val-*.tar"), workers=2,
              shuffle_buffer=64, drop_path=0.1)
    straight = train(_cfg(tmp_path / "straight", **kw))

    def stop_at_7(n, loss):
        if n == 7:
            os.kill(os.getpid(), 15)
        return loss

    on_loss_call(monkeypatch, stop_at_7)
    from mambaout.engine.signals import RunInterrupted

    with pytest.raises(RunInterrupted):
        train(_cfg(tmp_path / "split", **kw))
    assert read_checkpoint(tmp_path / "split" / "last.pt")["batch"] == 7
    monkeypatch.undo()
    resumed = train(_cfg(tmp_path / "split", resume=str(tmp_path / "split" / "last.pt"), **kw))
    a, b = (read_checkpoint(tmp_path / n / "last.pt") for n in ("straight", "split"))
    assert max_diff(a["model"], b["model"]) <= 1e-6
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-6)


@pytest.mark.slow
def test_torchrun_on_uneven_shards_finishes_with_equal_steps(shards, tmp_path):
    """Four train shards (100, 100, 100, 60) over 2 ranks × 2 workers, and one val shard over the 4 readers."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mambaout_test\nimg_size: 32\nepochs: 2\nwarmup_epochs: 0\nlr: 0.002\nbatch_size: 8\n"
                      "drop_path: 0.0\nmixup: 0.0\ncutmix: 0.0\nauto_augment: null\nreprob: 0.0\nworkers: 2\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, "-m", "mambaout", "train", "--recipe", str(recipe), "--train-data",
                        str(shards / "train-{000000..000003}.tar"), "--val-data", str(shards / "val-*.tar"),
                        "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["rank_steps"] for row in rows] == [[22, 22], [22, 22]]  # 360 // 2 // 8 steps each epoch
    assert all(row["val_images"] == 90 for row in rows), "every val image once, over both ranks"
    assert "train from shards" in r.stdout


def _quickstart_from_shards(root):
    """The README's quickstart from shards, as the README gives it. (From a saved Hugging Face dataset the run is
    the ImageFolder run to the digit, same rows, order and bytes: test_hf_training_is_the_folder_training checks
    that on the weights, without a third quickstart.)"""
    sh = root / "shards"
    return [["prepare-digits", sh, "--format", "shards"],
            ["train", "--recipe", "quickstart", "--train-data", sh / "train-*.tar", "--val-data", sh / "val-*.tar",
             "--output", root / "run_shards"],
            ["eval", "--checkpoint", root / "run_shards" / "best.pt", "--val-data", sh / "val-*.tar", "--output",
             root / "eval_shards.json"]]


@pytest.mark.slow
@pytest.mark.learning_run("quickstart", _quickstart_steps)
@pytest.mark.learning_run("shards", _quickstart_from_shards)
def test_quickstart_from_shards_reaches_the_folder_accuracy(learning_runs):
    folder_root, folder_steps = learning_runs.result("quickstart")
    root, steps = learning_runs.result("shards")
    for step in (*folder_steps, *steps):
        assert step.returncode == 0, step.stderr[-2000:]
    folder = json.loads((folder_root / "run" / "summary.json").read_text())
    from_shards = json.loads((root / "run_shards" / "summary.json").read_text())
    # Another order (shard shuffle and buffer): the same accuracy within a point and a half, and the bar the
    # folder quickstart is held to.
    assert from_shards["best_top1"] >= 97.0 and abs(from_shards["best_top1"] - folder["best_top1"]) <= 1.5
    evaluated = json.loads((root / "eval_shards.json").read_text())
    assert evaluated["images"] == 360 and evaluated["top1"] == pytest.approx(from_shards["best_top1"])


def test_compare_takes_the_same_data_flags(shards, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = cli_in_process(["compare", "--models", "mambaout_test", "--train-data", shards / "train-*.tar",
                                     "--val-data", shards / "val-*.tar", "--epochs", "1", "--img-size", "32",
                                     "--output", tmp_path / "c"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert rows[0]["model"] == "mambaout_test" and rows[0]["epochs"] == 1 and rows[0]["top1"] > 10.0  # > chance
    assert "train from shards" in (tmp_path / "c" / "mambaout_test" / "train.log").read_text()


def test_print_schedule_counts_steps_from_shards(shards, capsys):
    code, out, err = cli_in_process(["train", "--recipe", "quickstart", "--sched", "step", "--batch-size", "16",
                                     "--train-data", shards / "train-*.tar", "--print-schedule"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "epoch,lr" and len(out.splitlines()) == 16


