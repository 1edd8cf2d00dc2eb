"""Product vector quantiser: 4 ordered streams, each two sub-codebooks (16384 tokens).

Module names mirror the checkpoint under ``quantizer.quantizers.0.``:
``project_in``, ``project_out`` and ``_codebook.codebooks.{j}.embed``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def full_float32() -> Iterator[None]:
    """float32 matrix products in full precision here, whatever the host process chose.

    TF32 (``torch.backends.cuda.matmul.allow_tf32``, ``set_float32_matmul_precision("high")``)
    rounds the distances of the nearest-code search to 10 mantissa bits, which flips tokens on
    GPUs. Both settings are forced off inside and restored on the way out.
    """
    matmul = torch.backends.cuda.matmul
    tf32, precision = matmul.allow_tf32, torch.get_float32_matmul_precision()
    if not tf32 and precision == "highest":
        yield
        return
    matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        matmul.allow_tf32 = tf32


class Codebook(nn.Module):
    """One sub-codebook: ``embed`` [size, dim]."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.zeros(size, dim))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest row (squared Euclidean, full float32 even under TF32). ``[N, dim] -> [N]`` int64."""
        embed = self.embed
        with full_float32():
            dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(-1)
        return dist.argmin(dim=-1)


class _Codebooks(nn.Module):
    def __init__(self, sizes: list[int], dims: list[int]) -> None:
        super().__init__()
        self.codebooks = nn.ModuleList(Codebook(s, d) for s, d in zip(sizes, dims))


class ProductQuantizer(nn.Module):
    """Frames ``[B, T, D]`` <-> tokens ``[B, T, n_streams]`` in ``[0, prod(codebook_size))``.

    Sub-codebook ``j`` quantises chunk ``j`` of ``project_in(x)``; stream ``g`` is made of
    sub-codebooks ``g * K .. g * K + K - 1`` (``K = len(codebook_size)``, 2 released),
    mixed-radix: ``token = i_0 + size_0 * (i_1 + size_1 * ...)``.
    """

    def __init__(
        self, dim: int, codebook_size: tuple[int, ...], codebook_dim: tuple[int, ...], n_streams: int
    ) -> None:
        super().__init__()
        self.n_streams = n_streams
        self.per_stream = len(codebook_size)
        self.sizes = list(codebook_size) * n_streams
        self.dims = list(codebook_dim) * n_streams
        self.project_in = nn.Linear(dim, sum(self.dims))
        self.project_out = nn.Linear(sum(self.dims), dim)
        self._codebook = _Codebooks(self.sizes, self.dims)

    @property
    def codebooks(self) -> nn.ModuleList:
        """The sub-codebooks (:class:`Codebook`), in chunk order."""
        return self._codebook.codebooks

    @property
    def cardinality(self) -> int:
        n = 1
        for s in self.sizes[: self.per_stream]:
            n *= s
        return n

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` float -> ``[B, T, n_streams]`` int64 tokens."""
        z = self.project_in(x)
        chunks = z.split(self.dims, dim=-1)
        tokens = []
        for g in range(self.n_streams):
            token = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
            radix = 1
            for k in range(self.per_stream):
                j = g * self.per_stream + k
                chunk = chunks[j]
                idx = self._codebook.codebooks[j].nearest(chunk.reshape(-1, chunk.shape[-1]).float())
                token += radix * idx.view(chunk.shape[:-1])
                radix *= self.sizes[j]
            tokens.append(token)
        return torch.stack(tokens, dim=-1)

    def decode(self, tokens: torch.Tensor, n_streams: int | None = None) -> torch.Tensor:
        """``[B, T, S]`` int tokens (``S >= n_streams``) -> ``[B, T, D]``.

        Only the first ``n_streams`` streams are used (default: all); the codewords of
        the others are zero vectors before ``project_out`` (its bias still applies).
        """
        k = self.n_streams if n_streams is None else n_streams
        if not 1 <= k <= self.n_streams:
            raise ValueError(f"n_streams must be in 1..{self.n_streams}, got {k}")
        weight = self.project_out.weight
        parts = []
        for g in range(self.n_streams):
            rest = tokens[..., g] if g < k else None
            for m in range(self.per_stream):
                j = g * self.per_stream + m
                if rest is None:
                    parts.append(weight.new_zeros(*tokens.shape[:-1], self.dims[j]))
                    continue
                idx = rest % self.sizes[j]
                rest = torch.div(rest, self.sizes[j], rounding_mode="floor")
                parts.append(self._codebook.codebooks[j].embed.to(weight.dtype)[idx])
        return self.project_out(torch.cat(parts, dim=-1))


def is_training_only(key: str) -> bool:
    """Keys of the released quantiser that inference does not use (EMA statistics)."""
    return key.startswith("_codebook.codebooks.") and key.rsplit(".", 1)[-1] in {"inited", "cluster_size", "embed_avg"}
