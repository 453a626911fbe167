"""The training engine every task plugs into, and what it stands on: configuration, processes (torchrun/DDP),
stop signals, atomic checkpoints, metrics files and progress."""
