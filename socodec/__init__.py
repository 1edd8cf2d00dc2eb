"""SoCodec speech codec: 16 kHz speech <-> 4 token streams + a speaker vector."""

from socodec.codes import Codes
from socodec.errors import SoCodecError

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "SoCodec":
        from socodec.codec import SoCodec

        return SoCodec
    if name == "ChunkConfig":
        from socodec.longform import ChunkConfig

        return ChunkConfig
    raise AttributeError(name)


__all__ = ["SoCodec", "ChunkConfig", "Codes", "SoCodecError", "__version__"]
