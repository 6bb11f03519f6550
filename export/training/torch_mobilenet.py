"""MobileNet-V3 feature extractor in plain PyTorch, with torchvision's exact state-dict keys.

Used to *train* the backbone (`edge-export pretrain`) without torchvision: the module tree
is built from `export.graphs.mobilenet.stages`, the same table the torch-free ONNX builder uses,
so `model.state_dict()` has exactly torchvision's `features.*` keys and shapes, and the
weights it writes load into `export.graphs.mobilenet.build_backbone` (and into torchvision's
`mobilenet_v3_small().features`) unchanged. The suite checks this module against the ONNX
graph on the same state dict.

torch is imported lazily by `require_torch`, so importing this module costs nothing on a
machine without the `train` extra.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Mapping, Optional

import numpy as np

from export.errors import ExportError
from export.graphs.mobilenet import BN_EPS, FEATURE_SIZE, ConvLayer, stages
from export.graphs.weights import WeightsError

if TYPE_CHECKING:  # annotations only: torch is imported by require_torch, when a command needs it
    import torch

TRAIN_EXTRA_HINT = ("this command needs PyTorch, the optional extra `train`: pip install 'edge-run[train]' "
                    "(on a CPU-only machine install the CPU build first, so the extra does not pull a "
                    "multi-GB CUDA build: pip install torch==2.13.0)")
BN_MOMENTUM = 0.01  # torchvision's for MobileNet-V3


class TorchUnavailable(ExportError, RuntimeError):
    """PyTorch is not installed; the message names the extra to install (bad input to edge-export, exit 2)."""


def require_torch() -> ModuleType:
    """`import torch`, or TorchUnavailable naming the `train` extra."""
    try:
        import torch
    except ImportError as exc:
        raise TorchUnavailable(TRAIN_EXTRA_HINT) from exc
    return torch


def seeded_torch(seed: int, threads: Optional[int] = None) -> tuple[ModuleType, np.random.Generator]:
    """torch with its thread count set and its generator seeded, plus a numpy Generator on the same seed."""
    torch = require_torch()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    return torch, np.random.default_rng(seed)


def build_torch_backbone(variant: str = "small") -> torch.nn.Module:
    """An `nn.Module` mapping normalised images [N, 3, H, W] to pooled features [N, F]."""
    torch = require_torch()
    nn = torch.nn

    def conv_bn_act(layer: ConvLayer) -> "nn.Sequential":
        pad = (layer.kernel - 1) // 2
        parts = [nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, pad, groups=layer.groups, bias=False),
                 nn.BatchNorm2d(layer.cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
        if layer.act == "HardSwish":
            parts.append(nn.Hardswish())
        elif layer.act == "Relu":
            parts.append(nn.ReLU())
        return nn.Sequential(*parts)

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels: int, squeeze: int) -> None:
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.activation = nn.ReLU()
            self.scale_activation = nn.Hardsigmoid()

        def forward(self, x):
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return x * s

    class InvertedResidual(nn.Module):
        def __init__(self, block: "nn.Sequential", residual: bool) -> None:
            super().__init__()
            self.block = block
            self.use_res_connect = residual

        def forward(self, x):
            y = self.block(x)
            return y + x if self.use_res_connect else y

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            modules = []
            for index, stage in enumerate(stages(variant)):
                layers = [conv_bn_act(layer) if isinstance(layer, ConvLayer) else SqueezeExcitation(layer.channels, layer.squeeze)
                          for layer in stage.layers]
                if len(layers) == 1 and not stage.residual and index in (0, len(stages(variant)) - 1):
                    modules.append(layers[0])  # stem and last conv: features.i.0 / features.i.1
                else:
                    modules.append(InvertedResidual(nn.Sequential(*layers), stage.residual))
            self.features = nn.Sequential(*modules)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.feature_size = FEATURE_SIZE[variant]
            self._init_weights()

        def _init_weights(self) -> None:
            for m in self.modules():  # torchvision's scheme
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return torch.flatten(self.avgpool(self.features(x)), 1)

    return Backbone()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's `features.*` state as float32 numpy arrays (num_batches_tracked dropped)."""
    return {key: value.detach().cpu().numpy().astype(np.float32)
            for key, value in model.state_dict().items()
            if key.startswith("features.") and not key.endswith("num_batches_tracked")}


def load_numpy_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a numpy state dict (e.g. from `export.graphs.weights.load_state_dict`) into the module."""
    torch = require_torch()
    own = model.state_dict()
    tensors = {key: torch.from_numpy(np.ascontiguousarray(state[key], dtype=np.float32)) for key in own
               if key in state}
    missing = [key for key in own if key not in tensors and not key.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{len(missing)} missing key(s): " + ", ".join(missing[:8]))
    model.load_state_dict(tensors, strict=False)
