"""Pure torch modules of the model (mel front end, HuBERT, analyzer stages, vocoder): built from
typed configs, no file reading (that is :mod:`socodec.loading`)."""
