"""``socodec serve``: the codec as an HTTP / WebSocket service (the ``[serve]`` extra).

:mod:`.app` builds the ASGI app on a loaded :class:`~socodec.SoCodec` (routes, limits, API
key, metrics) and runs it on uvicorn or as a Ray Serve deployment; :mod:`.payloads` turns
request bodies into audio and codes and back, through the same readers and writers as the
command line.
"""
