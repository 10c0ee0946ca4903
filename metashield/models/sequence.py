"""Base learner for token sequences (API-call traces): embedding, 1-D convolutions, max over time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SequenceEncoder(nn.Module):
    """Token ids [B, L] -> features [B, C]: embed, ``len(channels)`` ReLU convolutions, masked max over time.

    Ids arrive as floats because episodes store every input as a float32 matrix; ids below 2**24 are exact.
    Id 0 is padding: it embeds to the zero vector and padded positions never win the max, so a sequence
    scores the same whatever padding follows it. The max pools over positions, not a fixed window, so a
    motif (a few calls in a row) counts wherever the trace shows it.
    """

    def __init__(self, vocab_size: int, embed_dim: int, channels: Sequence[int], kernel: int) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1 (a centred 'same' convolution), got {kernel}")
        if not channels:
            raise ValueError("channels must list at least one convolution width")
        self.embed = nn.Embedding(vocab_size + 1, embed_dim, padding_idx=0)
        convs: list[nn.Module] = []
        width = embed_dim
        for c in channels:
            convs.append(nn.Conv1d(width, c, kernel, padding=kernel // 2))
            width = c
        self.convs = nn.ModuleList(convs)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        valid = (ids > 0).unsqueeze(1)  # [B, 1, L]
        # Zeroing padded positions before each convolution keeps the padding out of every receptive field.
        h = (self.embed(ids) * valid.transpose(1, 2)).transpose(1, 2)  # [B, E, L]
        for conv in self.convs:
            h = torch.relu(conv(h)) * valid
        # ReLU outputs are >= 0 and padded positions are exactly 0, so a plain max equals the masked max.
        return h.amax(dim=-1)


class SequenceCNN(nn.Module):
    """``SequenceEncoder`` as ``body`` and a linear ``head`` with ``out_dim`` outputs (the MLP's layout, so
    ANIL adapts ``head`` and a prototypical network embeds with ``body``)."""

    def __init__(
        self,
        vocab_size: int,
        out_dim: int,
        *,
        embed_dim: int = 32,
        channels: Sequence[int] = (64, 64),
        kernel: int = 5,
    ) -> None:
        super().__init__()
        self.body = SequenceEncoder(vocab_size, embed_dim, channels, kernel)
        self.head = nn.Linear(self.body.out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
