r"""Write random-weight checkpoints in the released formats, under the released names.

Real size by default (the benchmark uses these: ~1.3 GB HuBERT .pt, analyzer and
vocoder safetensors); ``--tiny`` writes small models (~10 MB in all) for quick
experiments, plus their configs ``analyzer_tiny.json`` and ``vocoder_tiny.json``
(HuBERT's size is read from its checkpoint).
The HuBERT file is a fairseq-style trainer checkpoint, complete with a pickled
``fairseq.data.dictionary.Dictionary`` stand-in, so it exercises the same safe
loader as the real file.

    python scripts/make_random_checkpoints.py OUT_DIR [--seed 0]
    python scripts/make_random_checkpoints.py OUT_DIR --tiny
    socodec speech.wav out.wav --ckpt-dir OUT_DIR \
        --analyzer-config OUT_DIR/analyzer_tiny.json --vocoder-config OUT_DIR/vocoder_tiny.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socodec.config import AnalyzerConfig, HubertConfig, VocoderConfig  # noqa: E402
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE  # noqa: E402
from socodec.loading.hubert import fairseq_layout  # noqa: E402
from socodec.nn.analyzer import Analyzer  # noqa: E402
from socodec.nn.vocoder import Vocoder  # noqa: E402

log = logging.getLogger("make_random_checkpoints")


def fairseq_hubert_shapes(cfg: HubertConfig, n_labels: int = 504, final_dim: int = 768) -> dict[str, tuple[int, ...]]:
    """Every key and shape of a fairseq HuBERT state dict: what inference reads, plus the training-only keys."""
    shapes = {key: shape for key, (_hf_key, shape) in fairseq_layout(cfg).items()}
    shapes.update({
        "mask_emb": (cfg.embed_dim,),
        "label_embs_concat": (n_labels, final_dim),
        "final_proj.weight": (final_dim, cfg.embed_dim),
        "final_proj.bias": (final_dim,),
    })
    return shapes


def _random(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A plausible random tensor: unit norms, zero biases, fan-in scaled weights."""
    name = key.rsplit(".", 1)[-1]
    if "norm" in key and name == "weight" and len(shape) == 1:
        return torch.ones(shape)
    if name in ("bias", "beta", "alpha", "inited"):
        return torch.zeros(shape) if name != "inited" else torch.ones(shape)
    if name == "weight_g":
        return torch.ones(shape)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=gen) / max(1, fan_in) ** 0.5


def _fake_fairseq_dictionary() -> object:
    """An object that pickles as ``fairseq.data.dictionary.Dictionary`` (as in real checkpoints)."""
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        sys.modules.setdefault(name, types.ModuleType(name))
    module = sys.modules["fairseq.data.dictionary"]
    cls = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    module.Dictionary = cls  # type: ignore[attr-defined]
    obj = cls()
    obj.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(500)]
    obj.count = [1] * len(obj.symbols)
    return obj


def write_hubert(path: Path, cfg: HubertConfig, gen: torch.Generator) -> None:
    state = {k: _random(k, s, gen) for k, s in fairseq_hubert_shapes(cfg).items()}
    conv = " + ".join(f"[({d},{k},{s})]" for d, k, s in cfg.conv_layers)
    model_cfg = {
        "_name": "hubert", "extractor_mode": cfg.extractor_mode, "encoder_layers": cfg.num_layers,
        "encoder_embed_dim": cfg.embed_dim, "encoder_ffn_embed_dim": cfg.ffn_dim,
        "encoder_attention_heads": cfg.num_heads, "layer_norm_first": cfg.layer_norm_first,
        "conv_feature_layers": conv, "conv_bias": cfg.conv_bias, "conv_pos": cfg.conv_pos,
        "conv_pos_groups": cfg.conv_pos_groups, "activation_fn": "gelu", "final_dim": 768,
    }
    task_cfg = {"_name": "hubert_pretraining", "normalize": cfg.normalize, "sample_rate": 16000, "labels": ["km"]}
    ckpt = {
        "args": None,
        "cfg": {"_name": None, "model": model_cfg, "task": task_cfg},
        "model": state,
        "task_state": {"dictionaries": [_fake_fairseq_dictionary()]},
        "optimizer_history": [{"num_updates": 0}],
        "extra_state": {},
        "last_optimizer_state": None,
    }
    torch.save(ckpt, path)


def write_analyzer(path: Path, cfg: AnalyzerConfig, gen: torch.Generator) -> None:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Analyzer(cfg).state_dict().items()}
    d = cfg.model_size
    shapes["decoder_1.layers.8.weight"] = (cfg.in_dim, d, 3)
    shapes["decoder_1.layers.8.bias"] = (cfg.in_dim,)
    for j in range(cfg.n_subcodebooks):
        size, dim = cfg.codebook_size[j % len(cfg.codebook_size)], cfg.codebook_dim[j % len(cfg.codebook_dim)]
        p = f"quantizer.quantizers.0._codebook.codebooks.{j}."
        shapes[p + "inited"] = (1,)
        shapes[p + "cluster_size"] = (size,)
        shapes[p + "embed_avg"] = (size, dim)
    save_file({k: _random(k, s, gen).contiguous() for k, s in sorted(shapes.items())}, str(path))
    _readable(path)


def write_vocoder(path: Path, cfg: VocoderConfig, gen: torch.Generator) -> None:
    template = Vocoder(cfg).state_dict()
    state = {}
    for key, value in template.items():
        state[key] = value.clone() if key.endswith("filter") else _random(key, tuple(value.shape), gen)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    _readable(path)


def make_random_checkpoints(
    out_dir: Path,
    hubert: HubertConfig | None = None,
    analyzer: AnalyzerConfig | None = None,
    vocoder: VocoderConfig | None = None,
    seed: int = 0,
) -> None:
    """Write the three files (released names) into ``out_dir``; released sizes by default."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    write_hubert(out_dir / HUBERT_FILE, hubert or HubertConfig(), gen)
    write_analyzer(out_dir / ANALYZER_FILE, analyzer or AnalyzerConfig.released(), gen)
    write_vocoder(out_dir / VOCODER_FILE, vocoder or VocoderConfig.released(), gen)


#: ``--tiny`` sizes: HuBERT 2 layers of width 64; analyzer and vocoder as the JSON files below.
TINY_HUBERT = HubertConfig(
    conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
    embed_dim=64, ffn_dim=128, num_layers=2, num_heads=4, conv_pos=16, conv_pos_groups=4,
)
TINY_ANALYZER_JSON = {
    "in_dim": 64, "out_dim": 80, "n_model_size": 64, "downsample_scales": [2, 3], "upsample_scales": [[3, 2], [2]],
    "mel_config": {"style": "BigVGAN", "filter_length": 1024, "hop_length": 160, "win_length": 640,
                   "n_mel_channels": 80, "sampling_rate": 16000},
    "vq_class": "VectorQuantization",
    "vq_config": {"codebook_size": [128, 128], "codebook_dim": [8, 8], "requires_projection": True},
    "tree_config": [{"downsample_rate": 1, "n_groups": 4, "dropout": 0, "ordered": True}],
    "n_samples_per_token": 1920,
}
TINY_VOCODER_JSON = {
    "num_mels": 80, "resblock": 0, "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [11, 8, 4, 4, 4],
    "upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "activation": "snakebeta", "snake_logscale": True,
    "use_bias_at_final": True, "use_tanh_at_final": True,
}


def _readable(path: Path) -> None:
    """Give ``path`` the usual mode of a new file (safetensors creates it 0600, readable by its owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def make_tiny_checkpoints(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Tiny random models and their configs in ``out_dir``; returns the analyzer and vocoder config paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer_json, vocoder_json = out_dir / "analyzer_tiny.json", out_dir / "vocoder_tiny.json"
    analyzer_json.write_text(json.dumps(TINY_ANALYZER_JSON, indent=1) + "\n")
    vocoder_json.write_text(json.dumps(TINY_VOCODER_JSON, indent=1) + "\n")
    make_random_checkpoints(out_dir, hubert=TINY_HUBERT, analyzer=AnalyzerConfig.from_json(analyzer_json),
                            vocoder=VocoderConfig.from_json(vocoder_json), seed=seed)
    return analyzer_json, vocoder_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="small models (~10 MB) and their JSON configs instead of the released sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tiny:
        analyzer_json, vocoder_json = make_tiny_checkpoints(args.out_dir, seed=args.seed)
        log.info("wrote tiny %s, %s, %s in %s; use them with --ckpt-dir %s --analyzer-config %s --vocoder-config %s",
                 HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE, args.out_dir, args.out_dir, analyzer_json, vocoder_json)
        return
    make_random_checkpoints(args.out_dir, seed=args.seed)
    log.info("wrote %s, %s, %s in %s", HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE, args.out_dir)


if __name__ == "__main__":
    main()
