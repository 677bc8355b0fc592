"""Autoencoders: the seed's exact MLP, and a small convolutional one; ``model.kind=vae`` puts a
variational head on either.

All take and return ``(N, 1, 28, 28)`` images in [0, 1] and expose ``encode`` / ``decode``; in eval
mode ``model(x)`` is the deterministic reconstruction (a VAE decodes its mean). The MLP's state_dict
has the seed's keys, shapes and order (``encoder.0.weight`` ...); kinds ae and dae share it.
"""

from __future__ import annotations

import torch
from torch import nn

from ae_dist.config import ModelConfig

IMAGE_SHAPE = (1, 28, 28)


class MLPAutoencoder(nn.Module):
    """784 -> 128 -> 64 -> 12 -> 3 -> 12 -> 64 -> 128 -> 784, ReLU between, Sigmoid out."""

    def __init__(self, latent_dim: int = 3, hidden: tuple[int, ...] = (128, 64, 12)):
        super().__init__()
        widths = [IMAGE_SHAPE[1] * IMAGE_SHAPE[2], *hidden, latent_dim]
        self.encoder = _mlp(widths)
        self.decoder = nn.Sequential(*_mlp(widths[::-1]), nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.flatten(1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes).view(-1, *IMAGE_SHAPE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    """Stride-2 convolutions down to 7x7, a linear bottleneck, transposed convolutions up."""

    def __init__(self, latent_dim: int = 3, channels: tuple[int, ...] = (16, 32)):
        super().__init__()
        side = IMAGE_SHAPE[1] // 2 ** len(channels)
        if side * 2 ** len(channels) != IMAGE_SHAPE[1]:
            raise ValueError("model.channels: 28 must halve evenly once per stage (use 1 or 2 stages)")
        down, up = [], []
        for c_in, c_out in zip((1, *channels), channels):
            down += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        for c_in, c_out in zip(channels[::-1], (*channels[::-1][1:], 1)):
            up += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)]
        flat = channels[-1] * side * side
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, flat), nn.Unflatten(1, (channels[-1], side, side)),
                                     *up, nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class VariationalAutoencoder(nn.Module):
    """A VAE head on an autoencoder: its encoder's last linear layer, twice as wide, gives the code's
    mean and log-variance; the decoder is the autoencoder's. Keys are the autoencoder's under ``base.``."""

    def __init__(self, base: nn.Module):
        super().__init__()
        last = base.encoder[-1]
        base.encoder[-1] = nn.Linear(last.in_features, 2 * last.out_features)
        self.base, self.latent_dim = base, last.out_features

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of each image's code."""
        mean, logvar = self.base.encode(images).chunk(2, dim=1)
        return mean, logvar

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The code's mean: deterministic."""
        return self.moments(images)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.base.decode(codes)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        """The reconstruction of the mean; with ``noise`` (standard normal, one row per image: training),
        (reconstruction of ``mean + exp(logvar / 2) * noise``, mean, log-variance)."""
        mean, logvar = self.moments(images)
        if noise is None:
            return self.decode(mean)
        return self.decode(mean + torch.exp(0.5 * logvar) * noise), mean, logvar


def build_model(cfg: ModelConfig) -> nn.Module:
    base = MLPAutoencoder(cfg.latent_dim, cfg.hidden) if cfg.name == "mlp" else ConvAutoencoder(cfg.latent_dim, cfg.channels)
    return VariationalAutoencoder(base) if cfg.kind == "vae" else base
