"""Training the product quantiser: k-means initialisation, EMA codebook updates,
straight-through estimation, commitment loss and ordered stream dropout.

The rules follow the published model's training branch (see ``docs/training.md``):

* assignment: nearest codeword (squared Euclidean, ties to the lowest index) of the
  codebook as it was *before* this step's update;
* output: straight-through ``z + sg(q - z)`` (value ``q``, identity gradient to ``z``);
* commitment: mean of ``(sg(q) - z)^2`` per sub-codebook, averaged over sub-codebooks,
  dropped streams included; there is no codebook loss, codewords move by EMA only;
* EMA (decay λ, Laplace smoothing ε): ``N ← λN + (1-λ)n``, ``A ← λA + (1-λ)s``,
  ``N' = (N + ε) / (ΣN + Kε) · ΣN``, ``C = A / N'``, counts and sums summed over processes;
* k-means (once per sub-codebook, when it is not initialised): K random distinct samples
  as seeds, nearest-centroid rounds, an empty cluster keeps its centroid;
* ordered dropout: per clip ``r ~ U[0, 1)``, stream ``g`` (0-based) kept iff ``g / S <= r``;
* dead codes (``dead_code_fraction_of_mean`` > 0; the released config has replacement off): a code
  whose EMA count is below that fraction of the sub-codebook's mean count (the published rule: a
  fraction of the total count, K times larger) takes a random vector of the current batch,
  with an EMA count just above the threshold (as the published rule does), broadcast from process 0.

Two published quirks are not reproduced, on purpose: k-means runs *before* the first
assignment (the published step assigns every frame to the all-zero codebook), and the
EMA sums are seeded consistently with the codebook (``A = C · N'``, so the next EMA step
starts from exactly the k-means or loaded codewords; the published code seeds ``A = C``).
Padding frames are excluded from every statistic (the published code counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from socodec.nn.analyzer import ProductQuantizer
from socodec.train import distributed


def nearest(x: Tensor, embed: Tensor) -> Tensor:
    """Index of the closest row of ``embed`` [K, d] for each row of ``x`` [N, d] -> [N] int64."""
    dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(-1)
    return dist.argmin(dim=-1)


def kmeans(samples: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means on ``samples`` [N, d] -> (centroids [k, d], counts [k] of the last assignment).

    Seeds are ``k`` distinct random samples (drawn with replacement when N < k). Each round
    assigns every sample to its nearest centroid, then moves each centroid to the mean of
    its samples; an empty cluster keeps its centroid. ``counts`` are the cluster sizes of the
    last round's assignment (made before that round's move), as in the published code.
    """
    n = samples.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one sample")
    x = samples.float()
    if n >= k:
        seeds = torch.randperm(n, generator=generator)[:k]
    else:
        seeds = torch.randint(0, n, (k,), generator=generator)
    means = x[seeds.to(x.device)].clone()
    counts = torch.zeros(k, device=x.device)
    for _ in range(max(iters, 1)):
        idx = nearest(x, means)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        if iters == 0:
            break
        sums = torch.zeros_like(means).index_add_(0, idx, x)
        filled = counts > 0
        means[filled] = sums[filled] / counts[filled, None]
    return means, counts


def smoothed_counts(cluster_size: Tensor, epsilon: float) -> Tensor:
    """Laplace-smoothed counts ``N' = (N + ε) / (ΣN + Kε) · ΣN`` [K]."""
    total = cluster_size.sum()
    return (cluster_size + epsilon) / (total + cluster_size.numel() * epsilon) * total


def ema_update(
    embed: Tensor, cluster_size: Tensor, embed_avg: Tensor, counts: Tensor, sums: Tensor, decay: float, epsilon: float
) -> None:
    """One EMA step, in place: counts ``n`` [K] and sums ``s`` [K, d] of this step's assignments."""
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
    embed.copy_(embed_avg / smoothed_counts(cluster_size, epsilon)[:, None])


def consistent_sums(embed: Tensor, cluster_size: Tensor, epsilon: float) -> Tensor:
    """EMA sums ``A = C · N'`` that reproduce the codebook ``C`` exactly (used after k-means and on load)."""
    return embed * smoothed_counts(cluster_size, epsilon)[:, None]


def ordered_keep(batch: int, n_streams: int, generator: torch.Generator) -> Tensor:
    """Ordered stream dropout -> keep mask [batch, n_streams] bool.

    Per clip ``r ~ U[0, 1)``; stream ``g`` (0-based) is kept iff ``g / n_streams <= r``: the
    first ``floor(n_streams * r) + 1`` streams are kept, so stream 1 always and (1-based)
    stream k with probability ``(n_streams + 1 - k) / n_streams``.
    """
    r = torch.rand(batch, generator=generator)
    thresholds = torch.arange(n_streams, dtype=torch.float32) / n_streams
    return thresholds[None, :] <= r[:, None]


class CodebookStats(nn.Module):
    """EMA statistics of one sub-codebook (released names): ``inited`` [1], ``cluster_size`` [K], ``embed_avg`` [K, d]."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_avg", torch.zeros(size, dim))


@dataclass
class QuantOutput:
    """What the training quantiser returns.

    quant: ``[B, T, D]`` straight-through output after ``project_out`` (dropped streams zeroed);
    tokens: ``[B, T, S]`` int64; indices: per sub-codebook ``[B, T]`` int64;
    commitment: scalar (unweighted); keep: ``[B, S]`` bool, the streams kept per clip.
    """

    quant: Tensor
    tokens: Tensor
    indices: list[Tensor]
    commitment: Tensor
    keep: Tensor


@dataclass(frozen=True)
class VQSettings:
    decay: float = 0.99
    epsilon: float = 1e-5
    kmeans_iters: int = 50
    ordered_dropout: bool = True
    dead_code_fraction_of_mean: float = 0.0
    """A code whose EMA count falls below this fraction of the mean count is dead (0: never)."""
    enabled: bool = True
    """False (the published ``enable_vq`` switch, for a warm-up): the output is the continuous
    projection, the commitment loss 0; assignments, k-means, EMA and dropout still run."""


class EmaQuantizerTrainer(nn.Module):
    """Trains a :class:`~socodec.nn.analyzer.ProductQuantizer`: holds the EMA statistics
    (``stats.j``) and runs the training forward (:meth:`forward`)."""

    def __init__(self, vq: ProductQuantizer) -> None:
        super().__init__()
        self.stats = nn.ModuleList(CodebookStats(s, d) for s, d in zip(vq.sizes, vq.dims))
        self.loaded = [False] * len(self.stats)
        """Per codebook: its codewords were loaded (non-zero) by :meth:`reseed`, so no k-means runs over them."""

    def reseed(self, vq: ProductQuantizer, epsilon: float) -> None:
        """Prepare the EMA statistics for the current (just loaded) codebooks.

        A codebook with a non-zero ``embed`` counts as initialised (no k-means over it), whatever its
        loaded ``inited`` says; the loaded ``inited`` and ``embed_avg`` buffers themselves are kept as
        loaded. Only what is missing is filled in: counts that are missing, all zero, negative or not
        finite become 1 per code, and EMA sums that are missing (all zero) or not finite, or whose
        counts were replaced, are derived from the codewords (``embed × smoothed count``).
        """
        self.loaded = [False] * len(self.stats)
        with torch.no_grad():
            for j, (cb, st) in enumerate(zip(vq.codebooks, self.stats)):
                if not bool(cb.embed.any()):
                    continue
                self.loaded[j] = True
                counts = st.cluster_size
                bad_counts = (not bool(torch.isfinite(counts).all()) or bool((counts < 0).any())
                              or not float(counts.sum()) > 0)
                if bad_counts:
                    counts.fill_(1.0)
                if bad_counts or not bool(st.embed_avg.any()) or not bool(torch.isfinite(st.embed_avg).all()):
                    st.embed_avg.copy_(consistent_sums(cb.embed, st.cluster_size, epsilon))

    def initialised(self, j: int) -> bool:
        """Whether codebook ``j`` has codewords to train (its ``inited`` flag, or loaded non-zero codewords)."""
        return bool(self.stats[j].inited.item()) or self.loaded[j]

    @torch.no_grad()
    def forget_codebooks(self) -> None:
        """Mark every codebook uninitialised: the next training forward runs k-means on its batch."""
        self.loaded = [False] * len(self.stats)
        for st in self.stats:
            st.inited.zero_()

    @torch.no_grad()
    def _init_codebook(self, j: int, vq: ProductQuantizer, valid: Tensor, settings: VQSettings, gen: torch.Generator) -> None:
        """k-means over every process's valid vectors of chunk ``j``; process 0's result is broadcast."""
        cb, st = vq.codebooks[j], self.stats[j]
        samples = distributed.all_gather_rows(valid.float())
        centroids, counts = kmeans(samples, cb.embed.shape[0], settings.kmeans_iters, gen)
        cb.embed.copy_(centroids)
        st.cluster_size.copy_(counts)
        st.embed_avg.copy_(consistent_sums(cb.embed, st.cluster_size, settings.epsilon))
        st.inited.fill_(1.0)
        for t in (cb.embed, st.cluster_size, st.embed_avg, st.inited):
            distributed.broadcast(t)

    def forward(
        self, vq: ProductQuantizer, x: Tensor, mask: Tensor, settings: VQSettings, gen: torch.Generator
    ) -> QuantOutput:
        """Training forward of ``vq`` on encoder frames ``x`` [B, T, D] with valid-frame ``mask`` [B, T] bool.

        Updates the codebooks (k-means if needed, then one EMA step) after forming the output.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = vq.project_in(x.float())  # [B, T, sum(dims)]
            chunks = z.split(vq.dims, dim=-1)
            flat_mask = mask.reshape(-1)
            n_valid = flat_mask.sum().clamp(min=1)
            outs, indices, commits, stats = [], [], [], []
            for j, chunk in enumerate(chunks):
                cb = vq.codebooks[j]
                flat = chunk.reshape(-1, chunk.shape[-1])
                valid = flat.detach()[flat_mask]
                if not self.initialised(j):
                    self._init_codebook(j, vq, valid, settings, gen)
                elif not bool(self.stats[j].inited.item()):
                    self.stats[j].inited.fill_(1.0)  # loaded codewords, now trained: initialised from here on
                idx = nearest(flat.detach(), cb.embed)
                q = cb.embed[idx].view_as(chunk)  # a copy: the EMA below does not touch it
                diff = (q - chunk).pow(2).sum(-1).reshape(-1)
                commits.append((diff * flat_mask).sum() / (n_valid * chunk.shape[-1]))
                outs.append(chunk + (q - chunk).detach() if settings.enabled else chunk)
                indices.append(idx.view(chunk.shape[:-1]))
                vidx = idx[flat_mask]
                stats.append((torch.bincount(vidx, minlength=cb.embed.shape[0]).float(),
                              torch.zeros_like(cb.embed).index_add_(0, vidx, valid.float())))
            keep = self._keep(x.shape[0], vq.n_streams, settings, gen).to(x.device)
            per_chunk = keep.repeat_interleave(vq.per_stream, dim=1)  # [B, n_chunks]
            outs = [o * per_chunk[:, j, None, None].to(o.dtype) for j, o in enumerate(outs)]
            quant = vq.project_out(torch.cat(outs, dim=-1))
            commitment = torch.stack(commits).mean() if settings.enabled else z.new_zeros(())
            self._ema_step(vq, stats, settings)
            if settings.dead_code_fraction_of_mean > 0:
                self._replace_dead(vq, [c.reshape(-1, c.shape[-1]).detach()[flat_mask] for c in chunks], settings, gen)
        return QuantOutput(quant, _tokens(vq, indices), indices, commitment, keep)

    @staticmethod
    def _keep(batch: int, n_streams: int, settings: VQSettings, gen: torch.Generator) -> Tensor:
        if not settings.ordered_dropout:
            return torch.ones(batch, n_streams, dtype=torch.bool)
        return ordered_keep(batch, n_streams, gen)

    @torch.no_grad()
    def _ema_step(self, vq: ProductQuantizer, stats: list[tuple[Tensor, Tensor]], settings: VQSettings) -> None:
        """All processes' counts and sums are summed (one all-reduce), then every codebook steps."""
        flat = torch.cat([torch.cat([n, s.reshape(-1)]) for n, s in stats])
        distributed.all_reduce_sum(flat)
        offset = 0
        for j, (n, s) in enumerate(stats):
            k, size = n.numel(), s.numel()
            counts = flat[offset : offset + k]
            sums = flat[offset + k : offset + k + size].view_as(s)
            offset += k + size
            st = self.stats[j]
            ema_update(vq.codebooks[j].embed, st.cluster_size, st.embed_avg, counts, sums, settings.decay, settings.epsilon)


    @torch.no_grad()
    def _replace_dead(self, vq: ProductQuantizer, valid: list[Tensor], settings: VQSettings, gen: torch.Generator) -> None:
        """Dead codes take random vectors of this step's batch; process 0's codebooks are then broadcast."""
        replaced = False
        for j, (cb, st) in enumerate(zip(vq.codebooks, self.stats)):
            threshold = settings.dead_code_fraction_of_mean * float(st.cluster_size.sum()) / st.cluster_size.numel()
            dead = (st.cluster_size < threshold).nonzero().flatten()
            if dead.numel() == 0 or valid[j].shape[0] == 0:
                continue
            pick = torch.randint(0, valid[j].shape[0], (dead.numel(),), generator=gen).to(dead.device)
            replace_codes(cb.embed, st.cluster_size, st.embed_avg, dead, valid[j][pick].float(), 1.1 * threshold,
                          settings.epsilon)
            replaced = True
        if distributed.any_flag(replaced, vq.project_in.weight.device):
            for cb, st in zip(vq.codebooks, self.stats):
                for t in (cb.embed, st.cluster_size, st.embed_avg):
                    distributed.broadcast(t)


def replace_codes(embed: Tensor, cluster_size: Tensor, embed_avg: Tensor, rows: Tensor, vectors: Tensor,
                  count: float, epsilon: float) -> None:
    """Codes ``rows`` become ``vectors`` with EMA count ``count``; the EMA sums are re-derived (in place)."""
    embed[rows] = vectors
    cluster_size[rows] = count
    embed_avg.copy_(consistent_sums(embed, cluster_size, epsilon))


def _tokens(vq: ProductQuantizer, indices: list[Tensor]) -> Tensor:
    """Sub-codebook indices -> mixed-radix stream tokens [B, T, S] (as :meth:`ProductQuantizer.encode`)."""
    tokens = []
    for g in range(vq.n_streams):
        token = torch.zeros_like(indices[0])
        radix = 1
        for m in range(vq.per_stream):
            j = g * vq.per_stream + m
            token = token + radix * indices[j]
            radix *= vq.sizes[j]
        tokens.append(token)
    return torch.stack(tokens, dim=-1)


def usage_and_perplexity(indices: list[Tensor], mask: Tensor, sizes: list[int], per_stream: int) -> tuple[list[float], list[float]]:
    """Per stream: mean over its sub-codebooks of (distinct codes used / K) and exp(entropy) on valid frames."""
    usage, perplexity = [], []
    flat_mask = mask.reshape(-1)
    for g in range(len(indices) // per_stream):
        u, p = 0.0, 0.0
        for m in range(per_stream):
            j = g * per_stream + m
            idx = indices[j].reshape(-1)[flat_mask]
            counts = torch.bincount(idx, minlength=sizes[j]).float()
            prob = counts / counts.sum().clamp(min=1)
            u += float((counts > 0).float().mean())
            p += float(torch.exp(-(prob * prob.clamp(min=1e-12).log()).sum()))
        usage.append(u / per_stream)
        perplexity.append(p / per_stream)
    return usage, perplexity
