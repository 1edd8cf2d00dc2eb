"""The training loop: one call, :func:`train`, runs (or resumes) a run in ``RUN_DIR``.

``RUN_DIR/`` afterwards: ``metrics.csv``, ``valid.csv``, ``skipped.tsv``, ``run.json``,
``checkpoints/``, ``samples/``, ``tensorboard/`` (when installed) and ``export/``.
Running the same command again continues from the newest checkpoint up to ``steps``.

Pieces of one training step: the frozen targets, the learning rate, the logged numbers.

Training losses: masked reconstruction of HuBERT features and log-mel, plus commitment.

``loss = ssl_weight · D(ssl_pred, ssl) + mel_weight · D(mel_pred, mel) + commitment_weight · commit``
with ``D`` the mean absolute (``l1``) or squared (``l2``) error over the valid frames
and all channels (padding frames excluded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from socodec import __version__
from socodec.codec import SoCodec
from socodec.config import SAMPLES_PER_TOKEN
from socodec.config import ModelOptions
from socodec.errors import SoCodecError
from socodec.fileio import atomic_write
from socodec.nn.analyzer import ProductQuantizer
from socodec.train import distributed
from socodec.train.checkpoint import (
    global_rng_state, latest_checkpoint, list_checkpoints, save_checkpoint, set_global_rng_state,
)
from socodec.train.config import TrainConfig
from socodec.train.data import StepBatches, find_clips, index_clips
from socodec.train.checkpoint import export_run
from socodec.train.checkpoint import Board, CsvLog, train_columns, valid_columns
from socodec.train.model import ClipSettings, TrainModel, TrainOutput
from socodec.train.setup import Models, build_models
from socodec.train.validate import ValidResult, load_valid_clips, validate, write_samples
from socodec.train.vq import VQSettings, usage_and_perplexity


log = logging.getLogger(__name__)


class TrainingError(SoCodecError):
    """Training cannot go on (a non-finite loss, no usable data)."""


@dataclass(frozen=True)
class RunSpec:
    """A whole run: data, output folder, the model (and ``init``, the folder whose analyzer it
    starts from; None: from scratch) and hyper-parameters."""

    data: tuple[str, ...]
    out: Path
    model: ModelOptions
    config: TrainConfig
    valid: tuple[str, ...] = ()
    init: Path | None = None


@dataclass(frozen=True)
class RunResult:
    step: int
    """The step the run reached (== ``config.steps`` when it finished)."""
    resumed_from: int
    last_valid: ValidResult | None
    export_dir: Path | None
    """``RUN_DIR/export`` (None on processes other than the first)."""
    model: TrainModel = field(repr=False)
    """The trained model (this process's copy)."""


def train(spec: RunSpec) -> RunResult:
    """Train (or continue training) as ``spec`` says; see the module docstring."""
    dist = distributed.DistInfo.from_env()
    device = distributed.setup(dist, torch.device(spec.model.device))
    try:
        return _Run(spec, dist, device).run()
    finally:
        distributed.teardown()


class _Run:
    def __init__(self, spec: RunSpec, dist: distributed.DistInfo, device: torch.device) -> None:
        self.spec, self.cfg, self.dist, self.device = spec, spec.config, dist, device
        self.out = spec.out
        self.created_out = dist.is_main and not self.out.exists()
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        self.ckpt_dir = self.out / "checkpoints"
        self.schedule_steps = self.cfg.steps
        """Length of the learning-rate schedule: the first start's ``steps``, kept on resume (see :meth:`_resume`)."""

    def run(self) -> RunResult:
        try:
            return self._run()
        except BaseException:
            self._remove_if_empty_start()
            raise

    def _remove_if_empty_start(self) -> None:
        """A start that failed before its first checkpoint leaves no run folder it created behind."""
        if self.created_out and not list_checkpoints(self.ckpt_dir) and self.out.is_dir():
            shutil.rmtree(self.out, ignore_errors=True)
            log.debug("removed %s: the run stopped before its first checkpoint", self.out)

    # ------------------------------------------------------------------ set-up
    def _run(self) -> RunResult:
        cfg = self.cfg
        if cfg.schedule == "cosine" and cfg.warmup_steps > cfg.steps and self.dist.is_main:
            log.warning("warmup_steps (%d) is more than --steps (%d): the learning rate rises to only %.3g of --lr "
                        "and never decays; lower warmup_steps (--config) or raise --steps", cfg.warmup_steps, cfg.steps,
                        cfg.steps / cfg.warmup_steps)
        index = self._index(self.spec.data, "training")
        models = build_models(self.spec.model, self.spec.init, self.out, cfg.seed, cfg.ema_epsilon, self.dist, self.device)
        if models.missing_extras:
            log.info("not in the initial analyzer file (freshly initialised): %s", ", ".join(models.missing_extras))
        model = models.model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        amp = self._amp_dtype()
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.dist.rank)
        start = self._resume(model, optimizer, scaler, gen)
        if start == 0 and cfg.reinit_codebooks:
            model.vq_trainer.forget_codebooks()
        self._write_run_info(start)
        n = model.analyzer.cfg.n_streams
        metrics = CsvLog(self.out / "metrics.csv", train_columns(n))
        valid_log = CsvLog(self.out / "valid.csv", valid_columns(n))
        if self.dist.is_main:
            metrics.truncate_after(start)
            valid_log.truncate_after(start if start else -1)  # a fresh start validates step 0 again
        board = Board(self.out / "tensorboard", self.dist.is_main)
        valid_clips = self._valid_clips()
        last_valid = None
        try:
            if valid_clips and self._validation_missing(start, valid_log):
                last_valid = self._validate(models, valid_clips, start, valid_log, board)
            ddp = self._wrap(model)
            dead = cfg.dead_code_threshold(from_scratch=self.spec.init is None)
            if self.dist.is_main:
                log.info("dead-code replacement: %s", f"below {dead:g} x the mean count" if dead else
                         "off (the default with --init: the initial codes keep their meaning)"
                         if cfg.dead_code_fraction_of_mean < 0 else "off")
            inputs = StepInputs(VQSettings(cfg.ema_decay, cfg.ema_epsilon, cfg.kmeans_iters, cfg.ordered_dropout,
                                           dead),
                                ClipSettings(cfg.speaker_clip_min, cfg.speaker_clip_max, cfg.speaker_min_frames), amp)
            step = start
            for step, batch in zip(range(start + 1, cfg.steps + 1), self._loader(index, start)):
                row = self._step(models, ddp, optimizer, scaler, gen, inputs, batch, step, params)
                if self.dist.is_main:
                    metrics.append(row)
                    board.scalars("train", row, step)
                if step % cfg.every == 0 or step == cfg.steps:
                    self._checkpoint(model, optimizer, scaler, gen, step)
                    if valid_clips:
                        last_valid = self._validate(models, valid_clips, step, valid_log, board)
            export_dir = self._export(models, step)
        finally:
            board.close()
        return RunResult(step, start, last_valid, export_dir, model)

    def _index(self, inputs: Sequence[str], what: str):
        index = index_clips(find_clips(inputs), self.cfg.min_seconds)
        if self.dist.is_main:
            lines = "".join(f"{cid}\t{reason}\n" for cid, reason in index.skipped)
            if what == "training":
                atomic_write(self.out / "skipped.tsv", lambda tmp: tmp.write_text("id\treason\n" + lines))
            if index.skipped:
                log.warning("%s data: skipped %d clip(s) (unreadable or too short)%s", what, len(index.skipped),
                            "; see skipped.tsv" if what == "training" else "")
            log.info("%s data: %d clips, %.1f min", what, len(index.clips), index.seconds / 60)
        if not index.clips:
            raise TrainingError(f"no usable {what} clips in {' '.join(inputs)}")
        return index

    def _valid_clips(self):
        """The validation clips, on every process (each validates its share of them)."""
        if not self.spec.valid or self.cfg.valid_clips == 0:
            return []
        index = self._index(self.spec.valid, "validation")
        return load_valid_clips(index.clips, self.cfg.valid_clips, self.cfg.valid_max_seconds)

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.cfg.autocast == "none":
            return None
        return torch.bfloat16 if self.cfg.autocast == "bfloat16" else torch.float16

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Codebook buffers are kept equal by the quantiser's own all-reduce (no buffer broadcast).
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def _loader(self, index, start: int):
        cfg = self.cfg
        data = StepBatches(index, cfg.batch_size, cfg.crop_seconds, cfg.seed, self.dist.rank, self.dist.world_size,
                           cfg.cache_mb)
        workers = cfg.data_workers if cfg.data_workers >= 0 else (4 if self.device.type == "cuda" else 0)
        return torch.utils.data.DataLoader(
            data, batch_size=None, sampler=range(start, cfg.steps), num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers else None,
        )

    # ------------------------------------------------------------------ one step
    def _step(self, models: Models, ddp, optimizer, scaler, gen, inputs: StepInputs, batch, step: int, params) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        features, mel, frames = batch_targets(models.codec, batch)
        warm = step <= cfg.vq_warmup_steps
        if cfg.vq_warmup_steps and step == cfg.vq_warmup_steps + 1:
            log.info("step %d: quantiser warm-up over; codebooks re-initialised by k-means on this batch", step)
            models.model.vq_trainer.forget_codebooks()
        vq = dataclasses.replace(inputs.vq, enabled=False) if warm else inputs.vq
        with torch.autocast(self.device.type, dtype=inputs.amp or torch.float32, enabled=inputs.amp is not None):
            out = ddp(features, mel, frames, vq, inputs.clip, gen)
        terms = compute_losses(out, features, mel, frames, cfg)
        if distributed.any_flag(not bool(torch.isfinite(terms.total)), self.device):
            self._stop_non_finite(step, f"the loss is not finite ({float(terms.total.detach())})")
        lr = lr_at(step - 1, cfg, self.schedule_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not scaler.is_enabled() and not bool(torch.isfinite(norm)):
            self._stop_non_finite(step, f"the gradient norm is not finite ({float(norm)})")
        scaler.step(optimizer)
        scaler.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        row = step_metrics(step, terms, out, frames, models.model.analyzer.vq, float(norm), lr, seconds,
                           int(batch["skipped"]))
        if self.dist.is_main and (step % 10 == 0 or step == cfg.steps or step <= 3):
            log.info("step %d/%d  loss %.4f (mel %.4f, ssl %.4f, commit %.4f)  lr %.2e  %.2f s/step", step, cfg.steps,
                     row["loss"], row["loss_mel"], row["loss_ssl"], row["loss_commit"], lr, seconds)
        return row

    def _stop_non_finite(self, step: int, what: str) -> None:
        saved = latest_checkpoint(self.ckpt_dir, set_aside=self.dist.is_main)
        where = (f"the last good checkpoint (step {saved['step']}) is kept in {self.ckpt_dir}"
                 if saved is not None else "no checkpoint had been written yet")
        raise TrainingError(f"step {step}: {what}; training stopped, {where}. Lower --lr or check the data, "
                            "then run the same command again to resume")

    # ------------------------------------------------------------------ checkpoints, validation, export
    def _resume(self, model, optimizer, scaler, gen: torch.Generator) -> int:
        state = latest_checkpoint(self.ckpt_dir, set_aside=self.dist.is_main)
        distributed.barrier()  # process 0 may have renamed unreadable checkpoints aside
        if state is None:
            return 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        gens = state["generators"]
        if len(gens) == self.dist.world_size:
            gen.set_state(gens[self.dist.rank])
        else:
            log.warning("the checkpoint was written by %d processes, this run has %d: random draws restart",
                        len(gens), self.dist.world_size)
        set_global_rng_state(state["rng"])
        saved = TrainConfig.from_dict(state["config"])
        changed = [k for k in self.cfg.differences(saved) if k != "steps"]
        if changed and self.dist.is_main:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        self.schedule_steps = int(state.get("schedule_steps", saved.steps))
        if self.dist.is_main:
            log.info("resuming from step %d (%s)", state["step"], self.ckpt_dir)
            if self.cfg.steps != saved.steps:
                log.warning("--steps changed from %d to %d: %s", saved.steps, self.cfg.steps, self._schedule_note())
        return int(state["step"])

    def _schedule_note(self) -> str:
        cfg, length = self.cfg, self.schedule_steps
        if cfg.schedule != "cosine":
            return f"the {cfg.schedule} learning rate goes on unchanged"
        floor = cfg.lr * cfg.min_lr_ratio
        if cfg.steps == length:
            return f"the run ends where its planned cosine schedule of {length} steps does"
        if cfg.steps > length:
            return (f"the cosine schedule keeps its planned length of {length} steps, so the learning rate "
                    f"stays at its floor {floor:.3g} from step {length} to {cfg.steps}")
        return (f"the cosine schedule keeps its planned length of {length} steps, so the run ends at step "
                f"{cfg.steps} before the learning rate reaches its floor {floor:.3g}")

    def _checkpoint(self, model, optimizer, scaler, gen: torch.Generator, step: int) -> None:
        gens = distributed.gather_objects(gen.get_state())
        sums = distributed.gather_objects([float(cb.embed.double().sum()) for cb in model.analyzer.vq.codebooks])
        if any(s != sums[0] for s in sums):
            log.warning("step %d: the processes' codebooks differ (checksums %s)", step, sums)
        if self.dist.is_main:
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "generators": gens, "rng": global_rng_state(), "config": self.cfg.to_dict(), "version": __version__,
                "schedule_steps": self.schedule_steps,
            }
            save_checkpoint(self.ckpt_dir, step, payload, self.cfg.keep_checkpoints)
        distributed.barrier()

    def _validation_missing(self, start: int, valid_log: CsvLog) -> bool:
        """Whether step ``start`` (0, or the resumed checkpoint's) has no validation row yet (decided by process 0).

        A run stopped during a validation resumes from that step's checkpoint and validates it again.
        """
        missing = self.dist.is_main and not any(r.get("step") == str(start) for r in valid_log.rows())
        return distributed.any_flag(missing, self.device)

    def _validate(self, models: Models, clips, step: int, valid_log: CsvLog, board: Board) -> ValidResult:
        """Every process validates its share of ``clips`` (no process waits alone in a collective); the
        distances are averaged over all clips; process 0 writes the samples, the row and the log."""
        rank, world = self.dist.rank, self.dist.world_size
        samples = self.out / "samples" if self.dist.is_main else None
        n_samples = self.cfg.valid_samples if self.dist.is_main else 0
        if world > 1 and samples is not None and n_samples:
            write_samples(models.codec, clips[:n_samples], samples / f"step_{step:08d}")
            n_samples = 0
        mine = validate(models.codec, clips[rank::world], step, samples, n_samples)
        if world > 1:
            totals = torch.tensor([d * mine.clips for d in mine.distances] + [float(mine.clips)],
                                  dtype=torch.float64, device=self.device)
            distributed.all_reduce_sum(totals)
            count = int(totals[-1].item())
            mine = ValidResult(step, tuple(float(t) / max(1, count) for t in totals[:-1].tolist()), count)
        if self.dist.is_main:
            valid_log.append(mine.row())
            board.scalars("valid", mine.row(), step)
            log.info("validation at step %d: mel distance by streams {%s}; %s", step,
                     ", ".join(f"{k}: {d:.6g}" for k, d in enumerate(mine.distances, start=1)), ordering_note(mine))
        return mine

    def _export(self, models: Models, step: int) -> Path | None:
        folder = None
        if self.dist.is_main:
            meta = {"socodec_version": __version__, "socodec_train_step": str(step)}
            folder = export_run(models.model, self.out / "export", models.hubert_path, models.vocoder_path,
                                models.vocoder_config, meta)
        distributed.barrier()
        return folder

    def _write_run_info(self, start: int) -> None:
        if not self.dist.is_main:
            return
        src = self.spec.model
        info = {
            "socodec_version": __version__, "resumed_from": start, "world_size": self.dist.world_size,
            "data": list(self.spec.data), "valid": list(self.spec.valid),
            "init": None if self.spec.init is None else str(self.spec.init),
            "ckpt_dir": None if src.ckpt_dir is None else str(src.ckpt_dir),
            "analyzer_config": None if src.analyzer_config is None else str(src.analyzer_config),
            "device": str(self.device), "config": self.cfg.to_dict(),
        }
        text = json.dumps(info, indent=1) + "\n"
        atomic_write(self.out / "run.json", lambda tmp: tmp.write_text(text))


def ordering_note(result: ValidResult) -> str:
    """How the distances by stream count compare: ordered, or the first place where more streams do worse."""
    d = result.distances
    for k in range(1, len(d)):
        if d[k] > d[k - 1]:
            return (f"not ordered: {k + 1} streams give a larger distance than {k} ({d[k]:.6g} > {d[k - 1]:.6g}, "
                    f"by {d[k] - d[k - 1]:.2g})")
    return "ordered (more streams never give a larger distance)"


@dataclass(frozen=True)
class StepInputs:
    vq: VQSettings
    clip: ClipSettings
    amp: torch.dtype | None
    """Autocast dtype of the trainable parts (None: float32)."""


@torch.no_grad()
def batch_targets(codec: SoCodec, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """A loader batch -> (HuBERT features [B, 6T, C], log-mel [B, 12T, n_mels], frames [B]) on the codec's device.

    HuBERT is frozen (no gradient); each item's features stop at its own length (zeros after),
    and each item's log-mel is computed on its own padded audio (as in inference), zero after.
    """
    device = codec.device
    wav = batch["wav"].to(device, non_blocking=True)
    frames = batch["frames"].to(torch.long)
    lengths = frames * SAMPLES_PER_TOKEN
    features = codec.features(wav, lengths)
    mels = [codec.mel(wav[b : b + 1, : int(n)]) for b, n in enumerate(lengths)]
    total = wav.shape[1] // codec.vocoder.hop_length
    mel = torch.cat([F.pad(m, (0, 0, 0, total - m.shape[1])) for m in mels])
    return features, mel.float(), frames.to(device)


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None = None) -> float:
    """Learning rate of the ``step``-th update (0-based): linear warm-up, then constant or cosine to ``min_lr_ratio``.

    The cosine runs over ``schedule_steps`` (default ``cfg.steps``) and holds its floor after them.
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warm
    progress = min(1.0, step / max(1, schedule_steps or cfg.steps))
    factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * warm * factor


def step_metrics(step: int, terms: LossTerms, out: TrainOutput, frames: Tensor, vq: ProductQuantizer,
                 grad_norm: float, lr: float, seconds: float, skipped: int) -> dict[str, float | int]:
    """One ``metrics.csv`` row (this process's batch)."""
    t = out.vq.tokens.shape[1]
    mask = torch.arange(t, device=frames.device)[None, :] < frames[:, None]
    usage, perplexity = usage_and_perplexity(out.vq.indices, mask.to(out.vq.indices[0].device), vq.sizes, vq.per_stream)
    row: dict[str, float | int] = {"step": step, **terms.as_floats()}
    row.update({f"usage_{k}": u for k, u in enumerate(usage, start=1)})
    row.update({f"perplexity_{k}": p for k, p in enumerate(perplexity, start=1)})
    row.update({"grad_norm": grad_norm, "lr": lr, "seconds": seconds, "skipped": skipped})
    return row


@dataclass
class LossTerms:
    """The total (with gradient) and each unweighted term (scalars)."""

    total: Tensor
    mel: Tensor
    ssl: Tensor
    commitment: Tensor

    def as_floats(self) -> dict[str, float]:
        """The four values averaged over all processes (this process's alone when there is one)."""
        values = torch.stack([self.total, self.mel, self.ssl, self.commitment]).detach().float()
        values = distributed.all_reduce_sum(values.clone()) / distributed.world_size()
        return dict(zip(("loss", "loss_mel", "loss_ssl", "loss_commit"), values.tolist()))


def frame_mask(frames: Tensor, per_token: int, total: int) -> Tensor:
    """``[B, total]`` bool: the first ``frames[b] · per_token`` frames of item b are valid."""
    return torch.arange(total, device=frames.device)[None, :] < (frames * per_token)[:, None]


def masked_distance(pred: Tensor, target: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Mean ``|pred - target|`` (l1) or ``(pred - target)^2`` (l2) over valid frames of ``[B, F, C]`` tensors."""
    diff = pred.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.pow(2)
    weights = mask.to(err.dtype)[..., None]
    return (err * weights).sum() / (weights.sum() * err.shape[-1]).clamp(min=1)


def compute_losses(out: TrainOutput, ssl: Tensor, mel: Tensor, frames: Tensor, cfg: TrainConfig) -> LossTerms:
    """The loss terms of one batch: ``ssl`` [B, 6T, C] and ``mel`` [B, 12T, n_mels] targets, ``frames`` [B] valid tokens."""
    t = out.vq.tokens.shape[1]
    frames = frames.to(ssl.device)
    ssl_term = masked_distance(out.ssl_pred, ssl, frame_mask(frames, ssl.shape[1] // t, ssl.shape[1]), cfg.ssl_loss)
    mel_term = masked_distance(out.mel_pred, mel, frame_mask(frames, mel.shape[1] // t, mel.shape[1]), cfg.mel_loss)
    commit = out.vq.commitment
    total = cfg.ssl_weight * ssl_term + cfg.mel_weight * mel_term + cfg.commitment_weight * commit
    return LossTerms(total, mel_term, ssl_term, commit)
