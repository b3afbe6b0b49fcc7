"""A PyTorch MGN (Wang et al. 2018, §3.1, Table 1) that mirrors mgn_tf/model.py layer for layer, for the
same-run speed comparison of benchmarks/bench_speed.py. Benchmark tooling only: mgn_tf never imports torch.

    python benchmarks/torch_mgn.py     # self check: parameter counts equal the Keras model's at 96x32

The ResNet50 is written here rather than taken from torchvision, for two reasons:
  * mgn_tf uses Keras's ResNet50, which is the original (caffe) ResNet v1: the stride of a downsampling
    block sits in its first 1x1 conv (torchvision's v1.5 puts it in the 3x3 conv, ~10% more FLOPs), and
    every conv has a bias (torchvision's have none). A same-run speed comparison must run the same
    arithmetic, and the parameter counts can only match this way.
  * torchvision's PyPI wheels are CUDA builds whose compiled ops do not load beside the CPU torch wheel.
Everything else follows mgn_tf: the trunk is conv1 .. conv4_block1 (layer3[0]); each of the three branches
owns a copy of conv4_block2 .. conv5_block3 (layer3[1:] + layer4) with equal initial values, stride 2 in
conv5_block1 for the Global branch and 1 for the Part branches; global max pooling per branch plus max
pooling over 2 / 3 horizontal stripes; eight reductions (1x1 conv 2048->256 without bias, BN, ReLU);
eight bias-free identity classifiers, on the three pooled 2048-d global features and on the five reduced
part features; the batch-hard triplet acts on the three reduced global features.

Input: raw RGB 0..255, NCHW (or channels_last memory format), with mgn_tf's caffe preprocessing inside.
The losses and the SGD step mirror mgn_tf/losses.py, mgn_tf/trainer.py and mgn_tf/optimizer.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Copies of mgn_tf.model's constants, so that this module never imports TensorFlow (its benchmark child
# processes must not load a second runtime's thread pools); tests/test_torch_mgn.py checks they agree.
FEATURE_NAMES: tuple[str, ...] = (
    "global", "p2_global", "p3_global", "p2_part1", "p2_part2", "p3_part1", "p3_part2", "p3_part3",
)  # fmt: skip
TRIPLET_FEATURES: tuple[str, ...] = FEATURE_NAMES[:3]
BRANCHES: tuple[tuple[str, int, int], ...] = (("global", 0, 2), ("part2", 2, 1), ("part3", 3, 1))
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
REDUCTION_DIM = 256
BACKBONE_BN_EPSILON = 1.001e-5  # Keras's ResNet50
REDUCTION_BN_EPSILON = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's convention for Keras's momentum 0.9 (mgn_tf.model.BN_MOMENTUM)


def _bn(channels: int, epsilon: float = BACKBONE_BN_EPSILON) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=epsilon, momentum=BN_MOMENTUM)


class Bottleneck(nn.Module):
    """Keras's ResNet50 `block1`: 1x1 (strided) -> 3x3 -> 1x1, biased convs, projection shortcut if asked."""

    def __init__(self, in_channels: int, filters: int, stride: int = 1, projection: bool = False):
        super().__init__()
        out = 4 * filters
        self.conv1, self.bn1 = nn.Conv2d(in_channels, filters, 1, stride), _bn(filters)
        self.conv2, self.bn2 = nn.Conv2d(filters, filters, 3, padding=1), _bn(filters)
        self.conv3, self.bn3 = nn.Conv2d(filters, out, 1), _bn(out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride), _bn(out)) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + shortcut)


def _stage(in_channels: int, filters: int, blocks: int, stride: int) -> list[Bottleneck]:
    first = Bottleneck(in_channels, filters, stride, projection=True)
    return [first, *(Bottleneck(4 * filters, filters) for _ in range(blocks - 1))]


def _trunk() -> nn.Sequential:
    """conv1 .. conv4_block1 (torchvision's conv1 .. layer3[0])."""
    stem = [nn.Conv2d(3, 64, 7, 2, padding=3), _bn(64), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)]
    return nn.Sequential(*stem, *_stage(64, 64, 3, 1), *_stage(256, 128, 4, 2), _stage(512, 256, 6, 2)[0])


def _branch(conv5_stride: int) -> nn.Sequential:
    """conv4_block2 .. conv5_block3 (torchvision's layer3[1:] + layer4)."""
    return nn.Sequential(*_stage(512, 256, 6, 2)[1:], *_stage(1024, 512, 3, conv5_stride))


def _with_stride(branch: nn.Sequential, stride: int) -> nn.Sequential:
    """The branch with conv5_block1's stride set (its first 1x1 conv and its shortcut, as Keras's)."""
    block = branch[5]  # conv5_block1, after the five conv4 blocks
    block.conv1.stride = block.downsample[0].stride = (stride, stride)
    return branch


class Reduction(nn.Module):
    """1x1 conv 2048->256 without bias, BN, ReLU on a pooled [B, 2048] feature -> [B, 256]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2048, REDUCTION_DIM, 1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.bn = _bn(REDUCTION_DIM, REDUCTION_BN_EPSILON)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(pooled[:, :, None, None]))).flatten(1)


def stripe_rows(map_height: int, stripes: int) -> list[tuple[int, int]]:
    """[start, end) rows of equal horizontal stripes (mgn_tf.geometry.stripe_rows)."""
    step = map_height // stripes
    return [(i * step, (i + 1) * step) for i in range(stripes)]


class TorchMGN(nn.Module):
    """MGN on raw RGB 0..255 [B, 3, H, W] -> {"embedding", "logits", "triplet_features"} like build_mgn."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.register_buffer("bgr_mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.trunk = _trunk()
        # One template copied into every branch: equal initial values, separate parameters (as mgn_tf).
        template = _branch(2)
        self.branches = nn.ModuleDict(
            {name: _with_stride(copy.deepcopy(template), stride) for name, _, stride in BRANCHES}
        )
        self.reductions = nn.ModuleDict({f: Reduction() for f in FEATURE_NAMES})
        self.classifiers = nn.ModuleDict(
            {f: nn.Linear(2048 if f in TRIPLET_FEATURES else REDUCTION_DIM, num_classes, bias=False)
             for f in FEATURE_NAMES}
        )  # fmt: skip
        for classifier in self.classifiers.values():
            nn.init.normal_(classifier.weight, 0.0, 0.001)

    def pooled(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.flip(1) - self.bgr_mean  # RGB -> BGR minus the means: mgn_tf's CaffePreprocess
        shared = self.trunk(x)
        pooled = {}
        for name, stripes, _ in BRANCHES:
            fmap = self.branches[name](shared)
            prefix = "" if name == "global" else f"p{stripes}_"
            pooled[f"{prefix}global"] = fmap.amax(dim=(2, 3))
            for i, (start, end) in enumerate(stripe_rows(fmap.shape[2], stripes) if stripes else []):
                pooled[f"p{stripes}_part{i + 1}"] = fmap[:, :, start:end].amax(dim=(2, 3))
        return pooled

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The inference model: [B, 2048], the eight reduced features in FEATURE_NAMES order."""
        pooled = self.pooled(images)
        return torch.cat([self.reductions[f](pooled[f]) for f in FEATURE_NAMES], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pooled(images)
        reduced = {f: self.reductions[f](pooled[f]) for f in FEATURE_NAMES}
        logits = [
            self.classifiers[f](pooled[f] if f in TRIPLET_FEATURES else reduced[f]) for f in FEATURE_NAMES
        ]
        return {
            "embedding": torch.cat([reduced[f] for f in FEATURE_NAMES], dim=1),
            "logits": torch.stack(logits, dim=1),
            "triplet_features": torch.stack([reduced[f] for f in TRIPLET_FEATURES], dim=1),
        }


# ---------------------------------------------------------------------------------------------- losses


def pairwise_euclidean(embeddings: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B] Euclidean distances, zero (with a finite gradient) at zero distance."""
    squared = (embeddings[:, None, :] - embeddings[None, :, :]).square().sum(dim=2)
    zero = (squared <= 1e-16).to(squared.dtype)
    return torch.sqrt(squared + zero * 1e-16) * (1.0 - zero)


def batch_hard_triplet_per_anchor(
    labels: torch.Tensor, embeddings: torch.Tensor, margin: float = 1.2
) -> torch.Tensor:
    """[B]: max(0, margin + d(a, hardest positive) - d(a, hardest negative)); 0 without either."""
    distances = pairwise_euclidean(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    hardest_positive = torch.where(positive, distances, torch.zeros_like(distances)).amax(dim=1)
    far = distances.max() + 1.0
    hardest_negative = torch.where(negative, distances, far).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    loss = F.relu(margin + hardest_positive - hardest_negative)
    return torch.where(valid, loss, torch.zeros_like(loss))


def mgn_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, margin: float = 1.2) -> torch.Tensor:
    """mgn_tf's default loss: mean over the batch of (mean over the 8 heads of cross-entropy + mean over
    the 3 reduced global features of batch-hard triplet), both weights 1."""
    logits = outputs["logits"]
    batch, heads, classes = logits.shape
    per_head = F.cross_entropy(
        logits.reshape(-1, classes), labels.repeat_interleave(heads), reduction="none"
    ).view(batch, heads)
    features = outputs["triplet_features"]
    triplet = torch.stack(
        [batch_hard_triplet_per_anchor(labels, features[:, i], margin) for i in range(features.shape[1])]
    ).mean(dim=0)
    return (per_head.mean(dim=1) + triplet).mean()


def make_optimizer(model: nn.Module, lr: float = 0.01) -> torch.optim.SGD:
    """mgn_tf's default SGDL2: momentum 0.9 without dampening, L2 5e-4 added to every gradient."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def train_step(model: TorchMGN, optimizer: torch.optim.Optimizer, images, labels) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = mgn_loss(model(images), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# ------------------------------------------------------------------------------------------ accounting


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"trainable", "non_trainable"} as Keras counts them: BN moving mean/variance are non-trainable
    weights in Keras and buffers in PyTorch (num_batches_tracked has no Keras counterpart)."""
    statistics = [b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    return {
        "trainable": sum(p.numel() for p in model.parameters()),
        "non_trainable": sum(b.numel() for b in statistics),
    }


def forward_flops(model: TorchMGN, input_size: tuple[int, int], embed_only: bool = True) -> int:
    """FLOPs per image of one forward pass: 2 x the multiply-adds of every conv and linear layer (the
    elementwise BN / ReLU / pooling work is left out, as in the usual GFLOP figures)."""
    macs = [0]

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs[0] += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            macs[0] += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            images = torch.zeros(1, 3, *input_size)
            model.eval()
            model.embed(images) if embed_only else model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * macs[0]


def self_check(num_classes: int = 751, input_size: tuple[int, int] = (96, 32)) -> dict[str, int]:
    """Asserts that the parameter counts equal mgn_tf's build_mgn at `input_size`; returns them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    from mgn_tf.model import build_mgn

    keras_model = build_mgn(num_classes=num_classes, input_size=input_size, backbone_weights=None)
    keras_counts = {
        "trainable": sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights),
    }
    torch_counts = parameter_counts(TorchMGN(num_classes))
    assert torch_counts == keras_counts, f"torch {torch_counts} != keras {keras_counts}"
    return torch_counts


if __name__ == "__main__":
    counts = self_check()
    model = TorchMGN(751)
    print(f"parameter counts equal mgn_tf's: {counts}")
    print(f"forward GFLOP per 384x128 image (embedding model): {forward_flops(model, (384, 128)) / 1e9:.2f}")
