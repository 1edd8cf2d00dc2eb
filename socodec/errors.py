"""Exception types. Every failure socodec reports to users is a :class:`SoCodecError`."""


class SoCodecError(Exception):
    """Base class: a problem with the user's input, files or settings (not a bug)."""


class ConfigError(SoCodecError):
    """A model configuration is missing keys or describes an unsupported model."""


class CheckpointError(SoCodecError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the model."""


class AudioError(SoCodecError):
    """An audio file cannot be read or written."""


class CodesError(SoCodecError):
    """A token file is corrupt or holds invalid codes."""
