"""torch.export and ONNX files of a model's encoder, decoder or whole, with a dynamic batch dimension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ae_dist.data import Split


class Part(nn.Module):
    """``model.encode`` or ``model.decode`` as a module's forward (torch.export and ONNX export ``forward``)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def part_of(model: nn.Module, part: str) -> nn.Module:
    return (model if part == "model" else Part(model, "encode" if part == "encoder" else "decode")).eval()


@torch.no_grad()
def inputs_for(model: nn.Module, part: str, test: Split) -> torch.Tensor:
    """The test split's images in [0, 1], or their codes for the decoder."""
    images = test.images.float().div_(255)
    return model.encode(images) if part == "decoder" else images


def _batch_dim():
    return {0: torch.export.Dim("batch", min=1, max=1 << 20)}


def exported(module: nn.Module, inputs: torch.Tensor) -> torch.export.ExportedProgram:
    return torch.export.export(module, (inputs[:2],), dynamic_shapes=({**_batch_dim()},))


def save_pt2(module: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    torch.export.save(exported(module, inputs), str(path))


@torch.no_grad()
def run_pt2(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(inputs)


def save_onnx(module: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    torch.onnx.export(module, (inputs[:2],), str(path), input_names=["x"], output_names=["y"],
                      dynamic_shapes=({**_batch_dim()},), dynamo=True)


def run_onnx(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": inputs.numpy().astype(np.float32)})[0])


@torch.no_grad()
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
