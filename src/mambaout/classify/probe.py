"""The linear probe: the classifier trained alone on frozen features, computed once.

With everything but the classifier frozen and no augmentation, the features of a training image never change, so
they are computed in one pass (the evaluation preprocessing, the model in eval mode) and each epoch is a pass of
the classifier over a table of vectors. Every rank computes the whole table (the data of a probe is small); the
ranks then split it as a sampler splits images.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from ..data.sources import build_loader
from ..engine import distributed as D


def freeze_all_but_classifier(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


@torch.no_grad()
def pooled_features(model: nn.Module, images: Dataset, batch_size: int, workers: int) -> TensorDataset:
    """``(features before the classifier, label)`` of every readable image of ``images``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for batch in build_loader(images, batch_size, workers, D.DistInfo(device=device)):
        if batch is None:
            continue
        x, y = batch
        feats.append(model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float().cpu())
        labels.append(y)
    model.train(was_training)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def feature_batches(table: TensorDataset, epoch: int, first: int, needed: int, batch_size: int, seed: int,
                    info: D.DistInfo) -> DataLoader:
    """This rank's ``needed`` batches of the epoch from batch ``first`` on, in the order a sampler over (seed,
    epoch) gives, taken round again if unreadable images left the table shorter than the schedule counted."""
    sampler = DistributedSampler(table, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    total = needed * batch_size
    order = (order * (total // max(1, len(order)) + 1))[:total][first * batch_size:]
    return DataLoader(table, batch_size=batch_size, sampler=order, drop_last=True)


__all__ = ["feature_batches", "freeze_all_but_classifier", "pooled_features"]
