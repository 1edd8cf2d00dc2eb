"""Inference paths over the codec core (:mod:`.core`, which also runs batches): whole signals,
long inputs stage by stage (:mod:`.longform`), chunked and streaming synthesis (:mod:`.synthesis`).
Each takes a :class:`~socodec.inference.core.CodecCore`; :class:`socodec.codec.SoCodec` chooses
between them."""
