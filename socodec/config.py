"""Typed model configurations.

The released analyzer and vocoder configurations are built in
(:func:`AnalyzerConfig.released`, :func:`VocoderConfig.released`); other sizes
come from JSON files with the same keys as the published configs
(:func:`AnalyzerConfig.from_json`, :func:`VocoderConfig.from_json`).
HuBERT's configuration is read from the checkpoint itself
(:func:`HubertConfig.from_fairseq`).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from socodec.errors import ConfigError

SAMPLE_RATE = 16000
SAMPLES_PER_TOKEN = 1920
#: file kinds, by suffix (here, with no heavy imports, so the command line can route and
#: describe itself without loading torch): audio read, audio written (libsndfile format),
#: sample formats of written audio, token files
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")
WRITE_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}
SAMPLE_FORMATS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}
TOKEN_SUFFIXES = (".pt", ".soc")
HUBERT_HOP = 320
MEL_HOP = 160
LEAD_SAMPLES = 8000
#: how the (lead + input) signal is right-padded before analysis (see :func:`padded_length`)
PADDINGS = ("published", "grid")
DEFAULT_PADDING = "published"
HUBERT_TAIL_SAMPLES = 3200
#: how HuBERT's attention saw the input, as recorded in token files: every frame attends to every
#: other ("full", the published model's arithmetic, exact tokens) or only to frames of its window
#: ("windowed": approximate tokens, linear time); see :class:`ChunkConfig`
ATTENTION_FULL = "full"
ATTENTION_WINDOWED = "windowed"
ATTENTIONS = (ATTENTION_FULL, ATTENTION_WINDOWED)
#: epsilon of HuBERT's waveform standardisation (``F.layer_norm``); every path must use this one
NORMALIZE_EPS = 1e-5


def default_cache_dir() -> Path:
    """Where socodec keeps what it derives once per machine (HuBERT's converted weights, compiled
    kernels, Ray bookkeeping): ``$SOCODEC_CACHE_DIR``, else ``~/.cache/socodec``."""
    env = os.environ.get("SOCODEC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "socodec"


class _FromJson:
    """``from_json`` / ``resolve`` for configs that define ``released()`` and ``from_dict()``."""

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(read_json_object(path))  # type: ignore[attr-defined]

    @classmethod
    def resolve(cls, cfg: "str | Path | Any | None"):
        """None -> the released config; a path -> :meth:`from_json`; a config -> itself."""
        if cfg is None:
            return cls.released()  # type: ignore[attr-defined]
        return cfg if isinstance(cfg, cls) else cls.from_json(cfg)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end (BigVGAN style)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = MEL_HOP
    win_length: int = 640
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0


@dataclass(frozen=True)
class AnalyzerConfig(_FromJson):
    """Encoder, quantiser, speaker encoder and mel decoders."""

    in_dim: int = 1024
    out_dim: int = 80
    model_size: int = 1024
    downsample_scales: tuple[int, ...] = (2, 3)
    upsample_scales: tuple[tuple[int, ...], ...] = ((3, 2), (2,))
    codebook_size: tuple[int, ...] = (128, 128)
    codebook_dim: tuple[int, ...] = (128, 128)
    n_streams: int = 4
    samples_per_token: int = SAMPLES_PER_TOKEN
    mel: MelConfig = field(default_factory=MelConfig)

    @property
    def n_subcodebooks(self) -> int:
        return len(self.codebook_size) * self.n_streams

    @property
    def stream_cardinality(self) -> int:
        """Number of distinct token values in one stream (16384 released)."""
        n = 1
        for size in self.codebook_size:
            n *= size
        return n

    @classmethod
    def released(cls) -> "AnalyzerConfig":
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalyzerConfig":
        try:
            vq = d["vq_config"]
            mel = d.get("mel_config", {})
            trees = d["tree_config"]
            if len(trees) != 1:
                raise ConfigError(f"expected one tree_config entry, found {len(trees)}")
            if d.get("vq_class", "VectorQuantization") != "VectorQuantization":
                raise ConfigError(f"unsupported vq_class {d['vq_class']!r}")
            cfg = cls(
                in_dim=_integer(d["in_dim"], "in_dim"),
                out_dim=_integer(d["out_dim"], "out_dim"),
                model_size=_integer(d["n_model_size"], "n_model_size"),
                downsample_scales=tuple(int(s) for s in d["downsample_scales"]),
                upsample_scales=tuple(tuple(int(s) for s in group) for group in d["upsample_scales"]),
                codebook_size=tuple(int(s) for s in vq["codebook_size"]),
                codebook_dim=tuple(int(s) for s in vq["codebook_dim"]),
                n_streams=_integer(trees[0]["n_groups"], "n_groups"),
                samples_per_token=_integer(d.get("n_samples_per_token", SAMPLES_PER_TOKEN), "n_samples_per_token"),
                mel=MelConfig(
                    sample_rate=_integer(mel.get("sampling_rate", SAMPLE_RATE), "sampling_rate"),
                    n_fft=_integer(mel.get("filter_length", 1024), "filter_length"),
                    hop_length=_integer(mel.get("hop_length", MEL_HOP), "hop_length"),
                    win_length=_integer(mel.get("win_length", 640), "win_length"),
                    n_mels=_integer(mel.get("n_mel_channels", 80), "n_mel_channels"),
                ),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"analyzer config: missing or invalid entry ({exc})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if len(self.upsample_scales) != 2:
            raise ConfigError("analyzer config: upsample_scales must have two groups (decoder_1, decoder_2)")
        if len(self.codebook_size) != len(self.codebook_dim):
            raise ConfigError("analyzer config: codebook_size and codebook_dim differ in length")
        down = _product(self.downsample_scales)
        up = _product(self.upsample_scales[0])
        if down * HUBERT_HOP != self.samples_per_token or up != down:
            raise ConfigError("analyzer config: scales do not match 1920 samples per token")
        if self.out_dim != self.mel.n_mels:
            raise ConfigError("analyzer config: out_dim must equal n_mel_channels")
        if self.model_size % 32:
            raise ConfigError("analyzer config: n_model_size must be a multiple of 32 (grouped convs)")


@dataclass(frozen=True)
class VocoderConfig(_FromJson):
    """BigVGAN-style generator."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 4, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock: int = 0
    snake_logscale: bool = True
    use_bias_at_final: bool = True
    use_tanh_at_final: bool = True

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (160 released)."""
        return _product(self.upsample_rates)

    @classmethod
    def released(cls) -> "VocoderConfig":
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VocoderConfig":
        try:
            if d.get("activation", "snakebeta") != "snakebeta":
                raise ConfigError(f"unsupported vocoder activation {d['activation']!r}")
            cfg = cls(
                num_mels=_integer(d["num_mels"], "num_mels"),
                upsample_rates=tuple(_integer(r, "upsample_rates") for r in d["upsample_rates"]),
                upsample_kernel_sizes=tuple(_integer(k, "upsample_kernel_sizes") for k in d["upsample_kernel_sizes"]),
                upsample_initial_channel=_integer(d["upsample_initial_channel"], "upsample_initial_channel"),
                resblock_kernel_sizes=tuple(_integer(k, "resblock_kernel_sizes") for k in d["resblock_kernel_sizes"]),
                resblock_dilation_sizes=tuple(tuple(_integer(x, "resblock_dilation_sizes") for x in ds)
                                              for ds in d["resblock_dilation_sizes"]),
                resblock=_integer(d.get("resblock", 0), "resblock"),
                snake_logscale=_flag(d.get("snake_logscale", True), "snake_logscale"),
                use_bias_at_final=_flag(d.get("use_bias_at_final", True), "use_bias_at_final"),
                use_tanh_at_final=_flag(d.get("use_tanh_at_final", True), "use_tanh_at_final"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"vocoder config: missing or invalid entry ({exc})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("vocoder config: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ConfigError("vocoder config: resblock kernel and dilation lists differ in length")
        if self.resblock != 0:
            raise ConfigError("vocoder config: only resblock 0 (the released two-conv AMP block) is supported")
        if not self.snake_logscale:
            raise ConfigError("vocoder config: only snake_logscale true (the released log-scale SnakeBeta "
                              "parameters) is supported")
        if self.hop_length != MEL_HOP:
            raise ConfigError(f"vocoder config: upsample rates multiply to {self.hop_length}, expected {MEL_HOP}")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ConfigError("vocoder config: upsample_initial_channel not divisible by 2^stages")


@dataclass(frozen=True)
class HubertConfig:
    """HuBERT hyper-parameters, read from a fairseq checkpoint's ``cfg``."""

    conv_layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    embed_dim: int = 1024
    ffn_dim: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = True
    extractor_mode: str = "layer_norm"
    conv_bias: bool = False
    normalize: bool = True

    @property
    def extractor_dim(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def hop(self) -> int:
        return _product(stride for _, _, stride in self.conv_layers)

    @classmethod
    def from_fairseq(cls, model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any]) -> "HubertConfig":
        """Build from the ``cfg["model"]`` and ``cfg["task"]`` dicts of a fairseq checkpoint."""
        try:
            layers = _parse_conv_layers(str(model_cfg["conv_feature_layers"]))
            cfg = cls(
                conv_layers=layers,
                embed_dim=int(model_cfg["encoder_embed_dim"]),
                ffn_dim=int(model_cfg["encoder_ffn_embed_dim"]),
                num_layers=int(model_cfg["encoder_layers"]),
                num_heads=int(model_cfg["encoder_attention_heads"]),
                conv_pos=int(model_cfg["conv_pos"]),
                conv_pos_groups=int(model_cfg["conv_pos_groups"]),
                layer_norm_first=bool(model_cfg["layer_norm_first"]),
                extractor_mode=str(model_cfg.get("extractor_mode", "default")),
                conv_bias=bool(model_cfg.get("conv_bias", False)),
                normalize=bool(task_cfg.get("normalize", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"HuBERT checkpoint config: missing or invalid entry ({exc})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.extractor_mode != "layer_norm" or not self.layer_norm_first:
            raise ConfigError(
                "HuBERT checkpoint config: only the layer-norm extractor with pre-LayerNorm "
                f"layers is supported (found extractor_mode={self.extractor_mode!r}, "
                f"layer_norm_first={self.layer_norm_first})"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError("HuBERT checkpoint config: embed_dim not divisible by attention heads")
        if self.hop != HUBERT_HOP:
            raise ConfigError(f"HuBERT checkpoint config: conv strides multiply to {self.hop}, expected {HUBERT_HOP}")


def _parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``.

    Evaluated with a tiny arithmetic-only interpreter: no ``eval``.
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported conv_feature_layers syntax: {spec!r}")

    layers = ev(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"conv_feature_layers is not a non-empty list: {spec!r}")
    out = []
    for layer in layers:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) for v in layer)):
            raise ValueError(f"conv_feature_layers entry is not (dim, kernel, stride): {layer!r}")
        out.append(layer)
    return tuple(out)


@dataclass(frozen=True)
class ChunkConfig:
    """Chunk sizes for long inputs (``SoCodec.chunks``). Frames are 120 ms tokens unless noted.

    Defaults keep the activations of the real-size model to roughly 200-300 MB whatever the
    input length (measured on CPU, float32; see the README).

    Attributes:
        exact_max_seconds: longest input (seconds of audio) whose HuBERT attention spans every
            frame, as the published model's does (exact tokens).
            Longer inputs fall back to windowed attention (:attr:`hubert_window`) with a warning:
            full attention costs time growing with the square of the length (600 = 10 min).
        hubert_window_seconds: None (default): HuBERT attention spans every frame up to
            :attr:`exact_max_seconds`. A number of seconds: windowed attention of that length for
            every input longer than one window (what ``encode`` does when its ``hubert_window``
            argument is not given; ``--hubert-window`` on the command line).
        hubert_window: token frames kept per HuBERT window when attention falls back to windows
            above :attr:`exact_max_seconds` (167 = 20.04 s).
        hubert_context: token frames of context on each side of a window (9 = 1.08 s).
            Inputs of at most ``hubert_window + 2 * hubert_context`` frames are analysed whole, in
            one pass with every stage held at once; longer ones stage by stage in chunks.
        decode_chunk: token frames per decoder step when synthesising long inputs (50 = 6 s, one
            vocoder chunk: bounds the decoders' activations).
        vocoder_chunk: mel frames (10 ms) per vocoder call (600 = 6 s), plus 14 frames of
            context on each side. Inputs of at most this many mel frames are synthesised whole.
            The vocoder's activations (~0.3 GB per 1000 frames in float32) scale with it; the
            context costs 28 / ``vocoder_chunk`` extra work (~5 % at 600).
        mel_chunk: mel frames per block of the long-input log-mel (6000 = 60 s).
    """

    exact_max_seconds: float = 600.0
    hubert_window_seconds: float | None = None
    hubert_window: int = 167
    hubert_context: int = 9
    decode_chunk: int = 50
    vocoder_chunk: int = 600
    mel_chunk: int = 6000

    def __post_init__(self) -> None:
        for name in ("hubert_window", "decode_chunk", "vocoder_chunk", "mel_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ChunkConfig.{name} must be a positive integer, got {value!r}")
        limit = self.exact_max_seconds
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < float("inf"):
            raise ConfigError(f"ChunkConfig.exact_max_seconds must be a positive number of seconds, got {limit!r}")
        window = self.hubert_window_seconds
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float))
                                   or not 0 < window < float("inf")):
            raise ConfigError(f"ChunkConfig.hubert_window_seconds must be None or a positive number, got {window!r}")
        ctx = self.hubert_context
        if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 0:
            raise ConfigError(f"ChunkConfig.hubert_context must be a non-negative integer, got {ctx!r}")

    @property
    def hubert_span(self) -> int:
        """Largest input (token frames) analysed in one piece."""
        return self.hubert_window + 2 * self.hubert_context


if TYPE_CHECKING:  # torch is imported when a dtype is looked up: --help and --version never load it
    import torch


class _TorchDtypes(Mapping):
    """``--dtype`` names -> torch dtypes; torch is imported on the first look-up, not before."""

    NAMES = ("float32", "float16", "bfloat16")

    def __getitem__(self, name: str) -> torch.dtype:
        if name not in self.NAMES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __contains__(self, name: object) -> bool:
        return name in self.NAMES  # without importing torch

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


#: ``--dtype`` names and the torch types they stand for.
DTYPES: Mapping[str, torch.dtype] = _TorchDtypes()


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load and how to run it: one type for every command that needs the model
    (the command line fills it from the shared model flags, training from its own).

    Attributes:
        ckpt_dir: folder with the three released files (None: ``$SOCODEC_CKPT_DIR`` or ``./ckpts``).
        analyzer_config, vocoder_config: JSON configs of other model sizes (None: released).
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; dtype: the name of HuBERT's compute dtype (a torch
            dtype is turned into its name; :attr:`torch_dtype` gives the type); threads: torch's CPU
            threads (None: torch's choice).
        allow_download: download missing weights; batch_size: files run through the model together.
        hubert_window, exact_max_seconds: how long inputs are analysed (see :class:`ChunkConfig`).
    """

    ckpt_dir: Path | None = None
    analyzer_config: Path | None = None
    vocoder_config: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"  # a torch dtype becomes its name: options are made without importing torch
    threads: int | None = None
    allow_download: bool = True
    batch_size: int = 1
    hubert_window: float | None = None
    exact_max_seconds: float = 600.0

    def __post_init__(self) -> None:
        name = self.dtype if isinstance(self.dtype, str) else str(self.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"unknown dtype '{self.dtype}' (choose from {', '.join(DTYPES)})")
        object.__setattr__(self, "dtype", name)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch type of :attr:`dtype` (imports torch)."""
        return DTYPES[self.dtype]


def padded_length(n: int, padding: str, hop: int = SAMPLES_PER_TOKEN) -> int:
    """Samples L the analysis sees for ``n`` samples (lead included) under a padding mode.

    * ``"published"``: the published command line's arithmetic (SPEC §1): it always appends
      ``hop - 1`` = 1919 zeros, so ``L = n + 1919``, not a multiple of 1920.
    * ``"grid"``: the model fed a 1-D signal: zeros up to the 1920-sample grid (at least one frame).
    """
    if padding == "published":
        return n + hop - 1
    if padding == "grid":
        return hop * max(1, -(-n // hop))
    raise ConfigError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")


def token_frames(length: int, hop: int = SAMPLES_PER_TOKEN, feature_hop: int = HUBERT_HOP) -> int:
    """Token frames T for an analysed signal of ``length`` samples: ``ceil(ceil(L / 320) / 6)``."""
    features = -(-length // feature_hop)
    per_token = hop // feature_hop
    return -(-features // per_token)


def _product(values: Any) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def _flag(value: Any, key: str) -> bool:
    """A JSON boolean; strings such as ``"false"`` and numbers are refused (bool("false") is True)."""
    if not isinstance(value, bool):
        raise ConfigError(f"config entry {key!r} must be true or false, not {value!r}")
    return value


def _integer(value: Any, key: str) -> int:
    """A JSON integer; booleans, strings and fractions are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config entry {key!r} must be an integer, not {value!r}")
    return value


def read_json_object(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The JSON object in ``path``; one :class:`ConfigError` line naming the file otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable JSON {what} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the {what} must be a JSON object")
    return data
