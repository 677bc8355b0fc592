"""The loss of each ``model.kind`` on one micro-batch, and the terms logged beside it.

- ae: mean squared error of the reconstruction (the seed's loss).
- dae: the same against the clean images, from inputs with ``model.noise_std`` x keyed noise added.
- vae: ``MSE + model.beta * KL / pixels``, KL per sample of N(mu, sigma^2) from N(0, 1) (the Gaussian
  likelihood's scale: both terms per pixel); the code is ``mu + sigma * noise`` with keyed noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ae_dist.config import ModelConfig


def loss(model: nn.Module, images: torch.Tensor, noise: torch.Tensor | None,
         cfg: ModelConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if cfg.kind == "vae":
        recon, mu, logvar = model(images, noise)
        recon_loss = F.mse_loss(recon.float(), images)
        kl = kl_per_sample(mu.float(), logvar.float())
        return recon_loss + cfg.beta * kl / images[0].numel(), {"recon": recon_loss.detach(), "kl": kl.detach()}
    inputs = images + cfg.noise_std * noise if cfg.kind == "dae" else images
    return F.mse_loss(model(inputs).float(), images), {}


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), summed over the code, averaged over the batch (nats)."""
    return (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).sum(1).mean()


def noise_shape(cfg: ModelConfig, image_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The per-sample shape of the step's keyed noise (None: this kind draws none)."""
    return {"dae": tuple(image_shape), "vae": (cfg.latent_dim,)}.get(cfg.kind)
