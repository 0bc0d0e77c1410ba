"""The BSRNN/CMGAN training losses on complex STFTs [B, F, T].

The "RI" term follows the BSRNN reference: an L1 loss taken directly on the complex
spectra, i.e. the mean modulus ``|est - clean|`` of the complex difference (this is
what ``nn.L1Loss`` computes for complex tensors), not two separate real/imag terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

EPS = 1e-10

#: Scores the pair (reference, other) of compressed magnitudes -> [B, 1] in ~[0, 1].
Discriminate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def compressed_magnitude(spec: torch.Tensor, power: float) -> torch.Tensor:
    """``(|X| + 1e-10) ** power`` in float32; the +eps keeps the gradient finite at 0."""
    return (spec.abs().float() + EPS) ** power


def reconstruction_loss(est: torch.Tensor, clean: torch.Tensor,
                        loss_cfg: Mapping[str, float]) -> torch.Tensor:
    """``ri_weight · L1(complex) + mag_weight · L1(compressed magnitudes)``."""
    est, clean = est.to(torch.complex64), clean.to(torch.complex64)
    power = loss_cfg["compress"]
    ri = (est - clean).abs().mean()
    mag = F.l1_loss(compressed_magnitude(est, power), compressed_magnitude(clean, power))
    return loss_cfg["ri_weight"] * ri + loss_cfg["mag_weight"] * mag


def metric_generator_loss(score: torch.Tensor) -> torch.Tensor:
    """MetricGAN generator term: the discriminator's score of (clean, est) pushed to 1."""
    score = score.float().flatten()
    return F.mse_loss(score, torch.ones_like(score))


def discriminator_loss(discriminate: Discriminate, clean_mag: torch.Tensor,
                       est_mag: torch.Tensor, noisy_mag: torch.Tensor,
                       target_est: torch.Tensor, target_noisy: torch.Tensor) -> torch.Tensor:
    """MetricGAN discriminator loss: (clean, clean) -> 1, (clean, est) -> normalised
    PESQ(clean, est), (est, noisy) -> normalised PESQ(est, noisy). ``est_mag`` is detached."""
    est_mag = est_mag.detach()
    best = discriminate(clean_mag, clean_mag).float().flatten()
    enhanced = discriminate(clean_mag, est_mag).float().flatten()
    worst = discriminate(est_mag, noisy_mag).float().flatten()
    return (F.mse_loss(best, torch.ones_like(best))
            + F.mse_loss(enhanced, target_est.to(enhanced))
            + F.mse_loss(worst, target_noisy.to(worst)))
