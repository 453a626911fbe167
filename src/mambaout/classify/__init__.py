"""Image classification: the paper's ImageNet recipe (``TrainConfig``) as a task of the training engine."""
