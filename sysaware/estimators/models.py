"""The estimator network: embeddings + MLP -> per target a mean and ordered quantiles, all in standardised log space.

Quantiles stay ordered by construction: the head predicts the lowest quantile and non-negative (softplus) gaps to
each next one, so P90 >= P50 for every input without a penalty term.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class QuantileMLP(nn.Module):
    def __init__(self, num_numeric: int, vocab_sizes: list[int], dense_dim: int, num_targets: int,
                 num_quantiles: int, width: int = 128, depth: int = 2, dropout: float = 0.1, emb_dim: int = 8):
        super().__init__()
        self.num_targets = num_targets
        self.num_quantiles = num_quantiles
        self.embeddings = nn.ModuleList([nn.Embedding(n, emb_dim) for n in vocab_sizes])
        in_dim = num_numeric + emb_dim * len(vocab_sizes) + dense_dim
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, num_targets * (1 + num_quantiles))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Returns (batch, num_targets, 1 + num_quantiles): [mean, q_1, ..., q_k] with q ascending."""
        parts = [numeric] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
        if dense is not None:
            parts.append(dense)
        out = self.head(self.body(torch.cat(parts, dim=1))).view(-1, self.num_targets, 1 + self.num_quantiles)
        mean, first, gaps = out[..., :1], out[..., 1:2], F.softplus(out[..., 2:])
        return torch.cat([mean, first, first + torch.cumsum(gaps, dim=-1)], dim=-1)


def pinball_loss(pred_q: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """pred_q (B, T, K), target (B, T), quantiles (K,): mean over all of max(q*e, (q-1)*e), e = y - pred."""
    err = target.unsqueeze(-1) - pred_q
    return torch.maximum(quantiles * err, (quantiles - 1.0) * err).mean()


def estimator_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """MSE of the mean head + pinball of the quantile heads (log space, standardised)."""
    return F.mse_loss(pred[..., 0], target) + pinball_loss(pred[..., 1:], target, quantiles)


class NumpyQuantileMLP:
    """The same forward pass in numpy, for inference on a few rows: a step prices ~15 candidates, and at that size
    torch's intra-op thread pool costs more than the arithmetic (p99 of tens of ms on a busy 2-core machine against
    under a millisecond here). The products use einsum rather than BLAS for the same reason: OpenBLAS wakes its own
    threads and a busy machine turns that into p99 spikes of ~15 ms."""

    def __init__(self, net: QuantileMLP):
        from scipy.special import erf

        self._erf = erf
        self.num_targets, self.num_quantiles = net.num_targets, net.num_quantiles
        self.embeddings = [e.weight.detach().numpy().astype(np.float64) for e in net.embeddings]
        self.layers = [(m.weight.detach().numpy().T.astype(np.float64), m.bias.detach().numpy().astype(np.float64))
                       for m in net.body if isinstance(m, nn.Linear)]
        head = net.head
        self.head = (head.weight.detach().numpy().T.astype(np.float64), head.bias.detach().numpy().astype(np.float64))

    def __call__(self, numeric: np.ndarray, codes: np.ndarray, dense: np.ndarray | None = None) -> np.ndarray:
        parts = [numeric] + [emb[codes[:, j]] for j, emb in enumerate(self.embeddings)]
        if dense is not None:
            parts.append(dense)
        h = np.concatenate(parts, axis=1)
        for w, b in self.layers:
            h = np.einsum("ij,jk->ik", h, w) + b  # einsum, not BLAS: see the class doc
            h = 0.5 * h * (1.0 + self._erf(h / np.sqrt(2.0)))  # exact GELU, as nn.GELU()
        out = np.einsum("ij,jk->ik", h, self.head[0]) + self.head[1]
        out = out.reshape(-1, self.num_targets, 1 + self.num_quantiles)
        mean, first, gaps = out[..., :1], out[..., 1:2], np.logaddexp(0.0, out[..., 2:])  # softplus
        return np.concatenate([mean, first, first + np.cumsum(gaps, axis=-1)], axis=-1)
