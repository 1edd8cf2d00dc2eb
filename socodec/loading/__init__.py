"""Reading the model files: strict checkpoints, the fairseq reader, HuBERT's conversion cache,
weight download, and :func:`load_modules`, which builds and fills the model stages."""
