"""Run the causal convolution stacks of :mod:`socodec.nn.causal` chunk by chunk, exactly.

Every convolution in the analyzer's encoder and mel decoders is causal, so a stack
can consume its input in consecutive chunks of any size: each convolution keeps the
last ``dilation * (kernel - 1)`` input frames it has seen (zeros before the first
chunk, as the left padding of the whole-sequence forward), plus, for a strided
convolution, the frames waiting for the next stride step; each causal transposed
convolution keeps its last input frame. Concatenating the outputs of the chunks
gives the whole-sequence output (up to float reassociation, ~1e-7): the state is
exactly the left context the whole-sequence forward would have used.

This is what makes streaming synthesis (:mod:`socodec.streaming`) and long-form
encoding (:mod:`socodec.longform`) O(chunk) in time and memory per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from socodec.nn.causal import (
    CausalConv1d,
    CausalConvTranspose1d,
    DecoderBlock,
    Encoder,
    EncoderBlock,
    MelDecoder,
    ResidualUnit,
    Swish,
)

__all__ = ["CausalStreamer", "causal_context"]

_STATELESS = (Swish, nn.Identity, nn.SiLU)


class CausalStreamer:
    """Incremental state for one causal stack (one utterance).

    Call :meth:`encoder`, :meth:`decoder_body`, :meth:`decoder_project` or
    :meth:`run` with successive chunks; keep one streamer per utterance (and per
    batch: every chunk must have the same batch size). Chunks may have any
    length, including 0; a strided convolution emits an output as soon as the
    input frame it ends on has arrived, exactly like the whole-sequence forward.
    """

    def __init__(self) -> None:
        self._state: dict[int, Tensor] = {}

    def reset(self) -> None:
        """Forget everything: the next chunk is the start of a new sequence."""
        self._state.clear()

    # ------------------------------------------------------------------ module entry points
    def encoder(self, module: Encoder, features: Tensor) -> Tensor:
        """:class:`Encoder` on the next chunk: features ``[B, t, in_dim]`` -> frames ``[B, t', D]``.

        Over all chunks, ``sum(t') == ceil(sum(t) / hop)``, as :meth:`Encoder.forward`.
        """
        return self.run(module.layers, features.transpose(1, 2)).transpose(1, 2)

    def decoder_body(self, module: MelDecoder, x: Tensor) -> Tensor:
        """:meth:`MelDecoder.forward` on the next chunk: ``[B, t, D] -> [B, t * hop, D]``."""
        h = x.transpose(1, 2)
        for layer in module.layers[: module.n_body]:
            h = self.run(layer, h)
        return h.transpose(1, 2)

    def decoder_project(self, module: MelDecoder, h: Tensor) -> Tensor:
        """:meth:`MelDecoder.project` on the next chunk: ``[B, t, D] -> [B, t, out_dim]``."""
        return self.run(module.layers[module.n_body], h.transpose(1, 2)).transpose(1, 2)

    # ------------------------------------------------------------------ generic walk
    def run(self, module: nn.Module, x: Tensor) -> Tensor:
        """Any supported module on the next chunk, channels first: ``[B, C, t] -> [B, C', t']``."""
        if isinstance(module, CausalConv1d):
            return self._conv(module, x)
        if isinstance(module, CausalConvTranspose1d):
            return self._conv_transpose(module, x)
        if isinstance(module, ResidualUnit):
            return x + self.run(module.layers, x)
        if isinstance(module, (EncoderBlock, DecoderBlock)):
            return self.run(module.layers, x)
        if isinstance(module, nn.Sequential):
            for layer in module:
                x = self.run(layer, x)
            return x
        if isinstance(module, _STATELESS):
            return module(x)
        raise TypeError(f"cannot stream {type(module).__name__}: not a causal layer of socodec.nn.causal")

    def _conv(self, conv: CausalConv1d, x: Tensor) -> Tensor:
        """Causal conv: prepend the kept frames, convolve without padding, keep the unconsumed tail."""
        key = id(conv)
        kernel = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        stride = conv.stride[0]
        past = self._state.get(key)
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], kernel - 1)  # the whole-sequence left padding
        xx = torch.cat([past, x], dim=2) if x.shape[-1] else past
        n_out = (xx.shape[-1] - kernel) // stride + 1 if xx.shape[-1] >= kernel else 0
        self._state[key] = xx[..., n_out * stride :]
        if n_out == 0:
            return x.new_zeros(x.shape[0], conv.out_channels, 0)
        return nn.Conv1d.forward(conv, xx[..., : (n_out - 1) * stride + kernel])

    def _conv_transpose(self, conv: CausalConvTranspose1d, x: Tensor) -> Tensor:
        """Causal transposed conv (kernel 2s, stride s): output frame i needs inputs i and i - 1."""
        stride = conv.stride[0]
        if conv.kernel_size[0] != 2 * stride:
            raise TypeError(f"causal transposed conv with kernel {conv.kernel_size[0]} != 2 * stride {stride}")
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], conv.out_channels, 0)
        key = id(conv)
        past = self._state.get(key)
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], 1)
        self._state[key] = x[..., -1:]
        y = nn.ConvTranspose1d.forward(conv, torch.cat([past, x], dim=2))  # [B, C, (t + 2) * s]
        return y[..., stride : (x.shape[-1] + 1) * stride]


def causal_context(module: nn.Module) -> float:
    """Left context, in input frames, that one output frame of a causal stack depends on.

    Chunked processing with at least this much left context (rounded up, and aligned
    to the stack's total stride) reproduces the whole-sequence output. Used to size
    overlaps and documented latencies; :class:`CausalStreamer` needs none.
    """
    context, _ = _context(module, 0.0, 1.0)
    return context


def _context(module: nn.Module, context: float, scale: float) -> tuple[float, float]:
    """(accumulated context in input frames, input frames per frame at this point)."""
    if isinstance(module, CausalConv1d):
        context += module.dilation[0] * (module.kernel_size[0] - 1) * scale
        return context, scale * module.stride[0]
    if isinstance(module, CausalConvTranspose1d):
        return context + scale, scale / module.stride[0]
    if isinstance(module, ResidualUnit):
        return _context(module.layers, context, scale)
    if isinstance(module, (EncoderBlock, DecoderBlock)):
        return _context(module.layers, context, scale)
    if isinstance(module, (Encoder, MelDecoder)):
        return _context(module.layers, context, scale)
    if isinstance(module, nn.Sequential):
        for layer in module:
            context, scale = _context(layer, context, scale)
        return context, scale
    return context, scale
