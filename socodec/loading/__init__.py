"""Reading the model files: strict checkpoints and finding the released files (:mod:`.checkpoints`),
the fairseq reader and HuBERT's conversion cache (:mod:`.hubert`), and :func:`load_modules`
(:mod:`.modules`), which builds and fills the model stages."""
