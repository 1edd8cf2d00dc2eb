"""Fine-tuning the analyzer (``socodec train``): HuBERT frozen, vocoder fixed.

Entry point: :func:`socodec.train.loop.train` with a :class:`~socodec.train.loop.RunSpec`
(data, run folder, :class:`~socodec.config.ModelOptions` and ``init``, :class:`~socodec.train.config.TrainConfig`).
Modules: ``config`` (hyper-parameters), ``data`` (clips, crops, batches), ``vq`` (k-means,
EMA, straight-through, ordered dropout), ``model`` (the training forward), ``loop`` (the loop,
its steps and losses), ``checkpoint`` (what a run folder holds: checkpoints, logs, the export),
``validate``, ``distributed`` (DDP) and ``setup``. Nothing here is imported by ``import socodec``.
"""
