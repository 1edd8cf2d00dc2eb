"""Inference paths over the codec core (:mod:`.core`): whole signals, long inputs window by window
(:mod:`.longform`), chunked and streaming synthesis (:mod:`.synthesis`), batches (:mod:`.batching`).
Each takes a :class:`~socodec.inference.core.CodecCore`; :class:`socodec.codec.SoCodec` chooses
between them."""
