"""Autoencoders: the seed's exact MLP, and a small convolutional one.

Both take the data's shape ``(C, H, W)`` and return images of that shape in [0, 1], and expose
``encode`` / ``decode``. At the seed's 1x28x28 the MLP is the seed's exact model: its state_dict has
the seed's keys, shapes and order (``encoder.0.weight`` ...), 219,891 parameters. The conv model
takes any H, W: the input is padded on the bottom and right up to a multiple of 2**stages (with
zeros) and the output cropped back to H, W, so output shape = input shape.
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


def build_model(cfg: ModelConfig, shape: tuple[int, int, int] = IMAGE_SHAPE) -> nn.Module:
    """The model ``cfg`` names for images of ``shape`` (C, H, W)."""
    shape = tuple(int(side) for side in shape)
    if cfg.name == "mlp":
        return MLPAutoencoder(cfg.latent_dim, cfg.hidden, shape)
    return ConvAutoencoder(cfg.latent_dim, cfg.channels, shape)


def parameter_count(cfg: ModelConfig, shape: tuple[int, int, int]) -> int:
    """The number of weights ``build_model(cfg, shape)`` would have, without building it."""
    c, h, w = shape
    if cfg.name == "mlp":
        widths = [c * h * w, *cfg.hidden, cfg.latent_dim]
        return sum(a * b + b for a, b in zip(widths, widths[1:])) + sum(a * b + a for a, b in zip(widths, widths[1:]))
    stride = 2 ** len(cfg.channels)
    flat = cfg.channels[-1] * -(-h // stride) * -(-w // stride)
    chans = [c, *cfg.channels]
    convs = sum(9 * a * b + b for a, b in zip(chans, chans[1:])) + sum(9 * a * b + a for a, b in zip(chans, chans[1:]))
    return convs + 2 * flat * cfg.latent_dim + flat + cfg.latent_dim
