"""SoCodec speech codec: 16 kHz speech <-> 4 token streams + a speaker vector."""

from socodec.config import ChunkConfig
from socodec.errors import AudioError, CheckpointError, CodesError, ConfigError, SoCodecError

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "SoCodec":  # lazy: `import socodec` stays light (token files need no model)
        from socodec.codec import SoCodec

        return SoCodec
    if name == "Codes":  # lazy too: `socodec --version` and `--help` never import torch
        from socodec.codes import Codes

        return Codes
    raise AttributeError(name)


__all__ = [
    "SoCodec", "ChunkConfig", "Codes", "SoCodecError", "AudioError", "CheckpointError", "CodesError",
    "ConfigError", "__version__",
]
