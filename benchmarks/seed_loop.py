"""The seed's training loop, reproduced as it is written, with a step clock added.

    python -m benchmarks.seed_loop DATA_ROOT [--device cpu|cuda] [--batch 64]

Kept from the seed (docs: /work/shared/seed): the module-level ``ToTensor`` transform,
``datasets.FashionMNIST(root, download=..., transform=...)`` (train split by default),
``DataLoader(batch_size=64, shuffle=True)``, one batch peeked and its min/max printed, the
``autoencoder`` class that owns ``Adam(lr=1e-3, weight_decay=1e-5)`` and ``MSELoss`` and
whose ``train()`` loops ``for epoch: for data in data_loader``, flattening each batch with
``img.view(img.size(0), -1)`` and wrapping it in ``Variable``, and the per-epoch print.
Changed: ``download=False`` (the benchmark writes the files; nothing is fetched),
``dataiter.next()`` -> ``next(dataiter)`` (removed from PyTorch), a step budget
(``BENCH_STEPS``) that ends the loop, and, with ``--device cuda``, the model and each
batch moved to the GPU (what a user would add).
"""

import argparse

import torch
import torch.nn as nn
from torch.autograd import Variable
from torchvision import datasets
from torchvision.transforms import transforms

from benchmarks.clock import StepClock, cuda_sync, env_int

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("--device", default="cpu")
parser.add_argument("--batch", type=int, default=64)
args = parser.parse_args()
device = torch.device(args.device)
clock = StepClock(global_batch=args.batch, sync=cuda_sync(args.device))
budget = env_int("BENCH_STEPS", 937)

# transform data to pytorch tensors
transforms = transforms.ToTensor()

fashion_data = datasets.FashionMNIST(root=args.root, download=False, transform=transforms)

data_loader = torch.utils.data.DataLoader(fashion_data, batch_size=args.batch, shuffle=True)

# iterating through our data
dataiter = iter(data_loader)
images, labels = next(dataiter)

# output will get the minimum tensor and the maximum tensor in the dataset --> important for our last activation
print(torch.min(images), torch.max(images))


class autoencoder(nn.Module):  # noqa: N801 (the seed's name)
    def __init__(self, epochs=10, batchSize=128, learningRate=1e-3, weight_decay=1e-5):  # noqa: N803
        super().__init__()
        self.epochs = epochs
        self.batchSize = batchSize
        self.learningRate = learningRate
        self.weight_decay = weight_decay

        # encoder
        self.encoder = nn.Sequential(
            nn.Linear(28 * 28, 128),  # reduces from n * 724 to 128
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 12),
            nn.ReLU(),
            nn.Linear(12, 3)
        )

        # decoder
        self.decoder = nn.Sequential(
            nn.Linear(3, 12),
            nn.ReLU(),
            nn.Linear(12, 64),
            nn.ReLU(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 28 * 28),
            nn.Sigmoid()  # cause tensors are 0, 1
        )

        self.to(device)  # added: the GPU variant; a no-op on the CPU
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.learningRate, weight_decay=self.weight_decay)
        self.loss = nn.MSELoss()

    # feed data through network
    def forward(self, x):
        encoder = self.encoder(x)
        decoder = self.decoder(encoder)
        return decoder

    # training loop
    def train(self):
        for epoch in range(self.epochs):
            for data in data_loader:
                img, _ = data
                img = img.to(device)  # added: the GPU variant; a no-op on the CPU
                img = img.view(img.size(0), -1)
                img = Variable(img)

                # predict
                output = self(img)

                # find loss
                loss = self.loss(output, img)

                # perform back propagation
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                clock.tick()  # added: the benchmark's clock
                if clock.steps == budget:
                    return

            print(f'epoch {epoch + 1}/{self.epochs}, loss: {loss.data:.4f}')


model = autoencoder(epochs=10_000)  # the step budget ends it
model.train()
clock.write(contender="seed")
