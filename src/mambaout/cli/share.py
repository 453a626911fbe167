"""``mambaout push-to-hub``, and the push at the end of ``mambaout train --push-to-hub``."""
from __future__ import annotations

import argparse
import os

from .common import CliError


def add_hub_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--private`` and ``--revision`` (``--hub-private``/``--hub-revision`` on ``train``, whose own flags they
    would otherwise read as)."""
    p.add_argument(f"--{prefix}private", action="store_true", help="create the repository private (if it is new)")
    p.add_argument(f"--{prefix}revision", default=None, metavar="BRANCH",
                   help="push to this branch, created from main if missing (default: main)")


def add_push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="CHECKPOINT_OR_RUN_DIR",
                   help="a checkpoint file, or a 'mambaout train' run folder (its best.pt, else last.pt; the model "
                        "card then carries the run's recipe and metrics)")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hugging Face hub repository: ORG/NAME")
    add_hub_flags(p)
    p.add_argument("--commit-message", default="Upload MambaOut model", help="(default: %(default)s)")
    p.add_argument("--token", default=None,
                   help="a Hugging Face token (default: HF_TOKEN, else the one 'hf auth login' saved)")


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise CliError(f"repository id {repo_id!r} must be ORG/NAME (for example: my-name/mambaout-digits)")


def cmd_push(args) -> int:
    from ..infer.share import push_to_hub

    _check_repo_id(args.repo_id)
    url = push_to_hub(args.source, args.repo_id, private=args.private, revision=args.revision, token=args.token,
                      commit_message=args.commit_message)
    print(f"pushed {args.source} to {args.repo_id}{f' ({args.revision})' if args.revision else ''}: {url}")
    return 0


def push_after_training(output: str, repo_id: str, private: bool, revision: str | None) -> int:
    """The push of ``train --push-to-hub``: on failure one line that says where the run is and how to push it
    later, and exit status 1; the run's files stay as training left them."""
    import sys

    from ..infer.share import ShareError, push_to_hub

    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process pushes
        return 0
    try:
        url = push_to_hub(output, repo_id, private=private, revision=revision)
    except (ShareError, OSError, ValueError) as e:
        print(f"mambaout train: error: {e}; the run is kept in {output}: push it later with "
              f"'mambaout push-to-hub {output} {repo_id}'", file=sys.stderr)
        return 1
    print(f"pushed {output} to {repo_id}{f' ({revision})' if revision else ''}: {url}")
    return 0


def warn_without_token(repo_id: str) -> None:
    """Said before training, so nobody waits hours to learn the push at the end cannot work."""
    import warnings

    from huggingface_hub import get_token

    if os.environ.get("RANK", "0") == "0" and not get_token():
        warnings.warn(f"--push-to-hub {repo_id}: no Hugging Face token (HF_TOKEN, or 'hf auth login'); training "
                      "goes ahead, and the push at the end will fail unless one is set by then", stacklevel=2)
