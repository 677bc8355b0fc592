"""Autoencoders: the seed's exact MLP, and a small convolutional one; ``model.kind=vae`` puts a
variational head on either.

Both take the data's shape ``(C, H, W)`` and return images of that shape in [0, 1], and expose
``encode`` / ``decode``; in eval mode ``model(x)`` is the deterministic reconstruction (a VAE decodes
its mean). At the seed's 1x28x28 the MLP is the seed's exact model: its state_dict has the seed's
keys, shapes and order (``encoder.0.weight`` ...), 219,891 parameters; kinds ae and dae share it.
The conv model takes any H, W: the input is padded on the bottom and right up to a multiple of
2**stages (with zeros) and the output cropped back to H, W, so output shape = input shape.
"""

from __future__ import annotations

import torch
from torch import nn

from ae_dist.config import ModelConfig

IMAGE_SHAPE = (1, 28, 28)  # the seed's


class MLPAutoencoder(nn.Module):
    """C*H*W -> 128 -> 64 -> 12 -> 3 -> 12 -> 64 -> 128 -> C*H*W, ReLU between, Sigmoid out."""

    def __init__(self, latent_dim: int = 3, hidden: tuple[int, ...] = (128, 64, 12),
                 shape: tuple[int, int, int] = IMAGE_SHAPE):
        super().__init__()
        self.shape = tuple(shape)
        widths = [self.shape[0] * self.shape[1] * self.shape[2], *hidden, latent_dim]
        self.encoder = _mlp(widths)
        self.decoder = nn.Sequential(*_mlp(widths[::-1]), nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.flatten(1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes).view(-1, *self.shape)

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
    """Stride-2 convolutions (H and W padded up to a multiple of 2**stages), a linear bottleneck, transposed
    convolutions up, cropped back to H, W."""

    def __init__(self, latent_dim: int = 3, channels: tuple[int, ...] = (16, 32),
                 shape: tuple[int, int, int] = IMAGE_SHAPE):
        super().__init__()
        self.shape = tuple(shape)
        image_channels, height, width = self.shape
        stride = 2 ** len(channels)
        self.padded = (-(-height // stride) * stride, -(-width // stride) * stride)
        side_h, side_w = self.padded[0] // stride, self.padded[1] // stride
        down, up = [], []
        for c_in, c_out in zip((image_channels, *channels), channels):
            down += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        for c_in, c_out in zip(channels[::-1], (*channels[::-1][1:], image_channels)):
            up += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)]
        flat = channels[-1] * side_h * side_w
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, flat), nn.Unflatten(1, (channels[-1], side_h, side_w)),
                                     *up, nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.padded[0] - self.shape[1], self.padded[1] - self.shape[2]
        if pad_h or pad_w:
            images = nn.functional.pad(images, (0, pad_w, 0, pad_h))
        return self.encoder(images)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)[..., : self.shape[1], : self.shape[2]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


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


def build_model(cfg: ModelConfig, shape: tuple[int, int, int] = IMAGE_SHAPE) -> nn.Module:
    """The model ``cfg`` names for images of ``shape`` (C, H, W); a VAE head on it for ``model.kind=vae``."""
    shape = tuple(int(side) for side in shape)
    if cfg.name == "mlp":
        base = MLPAutoencoder(cfg.latent_dim, cfg.hidden, shape)
    else:
        base = ConvAutoencoder(cfg.latent_dim, cfg.channels, shape)
    return VariationalAutoencoder(base) if cfg.kind == "vae" else base


def parameter_count(cfg: ModelConfig, shape: tuple[int, int, int]) -> int:
    """The number of weights ``build_model(cfg, shape)`` would have, without building it."""
    c, h, w = shape
    if cfg.name == "mlp":
        widths = [c * h * w, *cfg.hidden, cfg.latent_dim]
        count = sum(a * b + b for a, b in zip(widths, widths[1:])) + sum(a * b + a for a, b in zip(widths, widths[1:]))
        last_in = widths[-2]
    else:
        stride = 2 ** len(cfg.channels)
        flat = cfg.channels[-1] * -(-h // stride) * -(-w // stride)
        chans = [c, *cfg.channels]
        count = (sum(9 * a * b + b for a, b in zip(chans, chans[1:])) + sum(9 * a * b + a for a, b in zip(chans, chans[1:]))
                 + 2 * flat * cfg.latent_dim + flat + cfg.latent_dim)
        last_in = flat
    return count + (last_in * cfg.latent_dim + cfg.latent_dim if cfg.kind == "vae" else 0)  # the VAE's log-variance
