"""PyTorch Lightning's Trainer on the same model and optimizer (needs the `bench` extra).

    python -m benchmarks.lightning_loop DATA_ROOT [--data tensor|loader] [--adam seed|fused] [--device cpu|cuda]

``--data tensor``: the tensor-resident batches the hand-written loop uses; ``--data loader``:
the seed's torchvision dataset + ``ToTensor`` + ``DataLoader(shuffle=True)``. ``--adam seed``:
``torch.optim.Adam(lr=1e-3, weight_decay=1e-5)`` as the seed writes it (PyTorch's default
implementation: on a CPU, a Python loop over the parameters), what a port of the seed to
Lightning gets; ``--adam fused``: the fused Adam ae-dist and the hand-written loop use, so that
what is left is the framework's per-step work. The Trainer runs lean: no logger, checkpointing,
progress bar, model summary or sanity check.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.transforms import ToTensor

from ae_dist.models import MLPAutoencoder
from benchmarks.clock import StepClock, cuda_sync, env_int
from benchmarks.resident import ResidentBatches, load_train_images


class LitAutoencoder(L.LightningModule):
    def __init__(self, adam: str):
        super().__init__()
        self.model = MLPAutoencoder()
        self.adam_options = {"fused": True} if adam == "fused" else {}

    def training_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return F.mse_loss(self.model(images), images)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=1e-5, **self.adam_options)


class Tick(L.Callback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--data", choices=("tensor", "loader"), default="tensor")
    parser.add_argument("--adam", choices=("seed", "fused"), default="seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    clock = StepClock(global_batch=args.batch, sync=cuda_sync(args.device))
    device = torch.device(args.device)
    if args.data == "tensor":
        train_data = ResidentBatches(load_train_images(args.root, device), args.batch)
    else:
        dataset = datasets.FashionMNIST(root=args.root, download=False, transform=ToTensor())
        train_data = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True)
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        max_steps=env_int("BENCH_STEPS", 937), max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Tick(clock)])
    trainer.fit(LitAutoencoder(args.adam), train_dataloaders=train_data)
    clock.write(contender=f"lightning-{args.data}-{args.adam}")


if __name__ == "__main__":
    main()
