"""Training: datasets and datamodules, Lightning task modules, callbacks, ``train``, ``pretrain`` and baselines."""
