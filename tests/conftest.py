import os

import pytest
import torch
from hypothesis import settings

# Hypothesis: a fixed sequence of examples in CI (a red run is then reproducible, and no run turns red by chance);
# fresh random examples on a developer's machine, where finding new failures is the point.
# No deadline and no example database in CI: a loaded machine must not turn a slow example red, and a fixed
# sequence has nothing to replay.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None, database=None)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

# Two cores: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

PAPER_MODELS = ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base"]


def timm_name(name: str) -> str:
    """timm registers our fast test variant under another name."""
    return "test_mambaout" if name == "mambaout_test" else name


def to_official_layout(sd: dict) -> dict:
    """Write a timm-layout state dict the way the official release files store it (the inverse mapping)."""
    import re

    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem."):]
        elif re.match(r"^stages\.\d+\.downsample\.", k):
            k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        elif re.match(r"^stages\.\d+\.blocks\.\d+\.", k):
            k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        elif k.startswith("head.norm."):
            k = k[len("head."):]
        elif k.startswith("head.pre_logits.fc."):
            k = "head.fc1." + k[len("head.pre_logits.fc."):]
        elif k.startswith("head.pre_logits.norm."):
            k = "head.norm." + k[len("head.pre_logits.norm."):]
        elif k.startswith("head.fc."):
            k = "head.fc2." + k[len("head.fc."):]
        out[k] = v
    return out


@pytest.fixture(scope="session")
def timm_models():
    """timm's reference models with seeded random weights, built once per session."""
    import timm

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(sum(map(ord, name)))
            model = timm.create_model(timm_name(name)).eval()
            # Random non-trivial norms and biases, so a mis-mapped key cannot hide behind ones and zeros.
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if p.ndim == 1:
                        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
            cache[name] = model
        return cache[name]

    return get


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """scikit-learn's digits as an ImageFolder (1,437 train / 360 val images of 8x8 pixels), written once."""
    from mambaout.data.digits import export_digits

    root = tmp_path_factory.mktemp("digits")
    export_digits(root)
    return root


def digits_subset(full, dest, n_train: int, n_val: int):
    """The first ``n_train`` / ``n_val`` images of every class of ``full`` copied under ``dest``."""
    import shutil

    for split, n in (("train", n_train), ("val", n_val)):
        for cls in sorted((full / split).iterdir()):
            (dest / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, dest / split / cls.name / f.name)
    return dest


@pytest.fixture(scope="session")
def small_digits(digits, tmp_path_factory):
    """A 10-class subset: 16 train and 4 val images per class."""
    return digits_subset(digits, tmp_path_factory.mktemp("small_digits"), 16, 4)


def write_small_inputs(root, classes):
    """A 32x32 ImageFolder (4 random images per class and split) under root/folder, and generated shapes in the
    COCO (root/coco) and ADE20K (root/ade) layouts: the smallest inputs every command accepts."""
    import numpy as np
    from PIL import Image

    from mambaout.dense.shapes import make_shapes

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / "folder" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / "folder" / split / c / f"{i}.png")
    make_shapes(root / "coco", "coco", n_train=4, n_val=2, size=(64, 64))
    make_shapes(root / "ade", "ade20k", n_train=4, n_val=2, size=(64, 64))


def free_port() -> int:
    """A loopback port nobody listens on now (unprivileged, so tests pass as any user). A server started on it
    later can still lose it to another process: ``start_demo`` retries for that."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(args, log, env=None, cwd=None, timeout=180, attempts=4):
    """Start ``mambaout demo ARGS --port P`` on a free loopback port and wait until it answers HTTP; returns
    (process, port). Another process can take the port between the probe and the demo's own bind: the demo then
    exits saying so, and it is started again on a fresh port."""
    import subprocess
    import sys
    import time
    import urllib.request

    for _ in range(attempts):
        port = free_port()
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mambaout", "demo", *map(str, args), "--port", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200:
                        return proc, port
            except OSError:
                time.sleep(0.5)
        text = log.read_text()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"demo did not come up in {timeout} s:\n{text[-3000:]}")
        if "cannot listen" not in text and "address already in use" not in text.lower():
            pytest.fail(f"demo exited early:\n{text[-3000:]}")
    pytest.fail(f"demo found no free port in {attempts} attempts")


def stop_process(proc, timeout=20):
    """SIGTERM, then SIGKILL if it lingers."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------ learning runs
# The end-to-end learning checks (the digits quickstart from a folder and from shards, detection and segmentation
# on the generated shapes) run the CLI for minutes each, and none gains from a second thread
# (measured: one thread within 5% of two). So they start together when the session starts, one thread each and at
# the lowest CPU priority: they take the core the rest of the suite leaves idle (most of it is single-threaded:
# interpreter start-up, small models) and yield whenever it needs both. Their tests run last and check what the
# runs produced.
class LearningRuns:
    def __init__(self):
        self.jobs: dict = {}
        self.closed = False

    def start(self, name, root, steps):
        import subprocess
        import sys
        import threading

        results, procs = [], []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}

        def run():
            for argv in steps:
                if self.closed:
                    return
                proc = subprocess.Popen([sys.executable, "-m", "mambaout", *map(str, argv)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, preexec_fn=lambda: os.nice(19))
                procs.append(proc)
                out, err = proc.communicate()
                results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))

        thread = threading.Thread(target=run, name=f"learning-{name}", daemon=True)
        thread.start()
        self.jobs[name] = (thread, root, results, procs)

    def result(self, name, timeout=2400):
        """(root, one CompletedProcess per step) once every step of ``name`` has run."""
        thread, root, results, procs = self.jobs[name]
        thread.join(timeout)
        if thread.is_alive():
            self.close()
            pytest.fail(f"learning run {name!r} did not finish in {timeout} s")
        return root, results

    def close(self):
        self.closed = True
        for _, _, _, procs in self.jobs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def pytest_collection_modifyitems(session, config, items):
    """The learning checks go last: by the time they run, their background runs have had the whole suite."""
    items.sort(key=lambda item: item.get_closest_marker("learning_run") is not None)


@pytest.fixture(scope="session", autouse=True)
def learning_runs(request, tmp_path_factory):
    runs = LearningRuns()
    for item in request.session.items:
        for marker in item.iter_markers("learning_run"):  # a test may read several runs (one to compare with)
            if marker.args[0] not in runs.jobs:
                name, steps = marker.args
                root = tmp_path_factory.mktemp(f"learning-{name}")
                runs.start(name, root, steps(root))
    yield runs
    runs.close()


def cli_in_process(argv, capsys):
    """(exit code, stdout, stderr) of ``mambaout ARGV`` run in this process: the same ``main`` as the console
    script, without paying an interpreter start and torch import per check (real processes are tested too)."""
    from mambaout.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def max_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def wait_for(proc, needle: str, timeout: float = 600) -> str:
    """Read ``proc``'s stdout until a line holds ``needle``; the output so far. Kills it and fails otherwise."""
    import time

    seen = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; output so far:\n{seen[-2000:]}")


def run_forked(fn, args, nprocs: int = 2, timeout: float = 120) -> None:
    """``fn(rank, *args)`` in ``nprocs`` forked processes (no fresh interpreters or imports to pay for), killed
    and failed after ``timeout`` seconds."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{fn.__name__} did not finish in {timeout} s")


def on_loss_call(monkeypatch, action):
    """Route every loss of ``mambaout.classify.train`` through ``action(n, loss)`` (n counts calls from 1), e.g. to
    make a loss NaN or to send the process a signal mid-step."""
    from mambaout.classify import train as train_mod

    real = train_mod._criterion
    calls = {"n": 0}

    def criterion(cfg, mixup_on):
        crit = real(cfg, mixup_on)

        def wrapped(logits, targets):
            calls["n"] += 1
            return action(calls["n"], crit(logits, targets))

        return wrapped

    monkeypatch.setattr(train_mod, "_criterion", criterion)
