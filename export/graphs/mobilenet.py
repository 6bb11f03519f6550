"""MobileNet-V3 (Small, Large) feature extractors as ONNX graphs, built without torch.

The network is exactly torchvision's `mobilenet_v3_small` / `mobilenet_v3_large`
(`torchvision/models/mobilenetv3.py`, width 1.0, no dilation, no reduced tail) up to the
global average pool: the state-dict keys are torchvision's `features.*` keys, so a
torchvision checkpoint (saved as `.safetensors` or `.npz`) loads as is and its classifier
is ignored. The graph maps `image` [N, 3, H, W] (already normalised) to `features` [N, F],
F = 576 (Small) or 960 (Large).

Layer-for-layer correspondence with torchvision:
- Conv2dNormActivation -> Conv (no bias) + BatchNormalization (eps 1e-3) + activation;
  with `fold_bn` the BatchNorm is folded into the Conv's weight and bias.
- Hardswish -> HardSwish (opset 14+); ReLU -> Relu.
- SqueezeExcitation -> GlobalAveragePool, Conv (fc1, bias), Relu, Conv (fc2, bias),
  HardSigmoid(alpha=1/6, beta=0.5) (torch's hardsigmoid; ONNX's default alpha 0.2 is a
  different function), Mul.
- Residual connection where stride 1 and input channels == output channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from export.graphs.graph import GraphBuilder
from export.graphs.weights import check_state_dict

VARIANTS = ("small", "large")
FEATURE_SIZE = {"small": 576, "large": 960}
BN_EPS = 1e-3

# torchvision `_mobilenet_v3_conf`: input channels, kernel, expanded channels, output
# channels, squeeze-excitation, activation ("RE" ReLU / "HS" Hardswish), stride.
_BNECK = {
    "large": (
        (16, 3, 16, 16, False, "RE", 1),
        (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2),
        (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1),
        (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2),
        (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ),
    "small": (
        (16, 3, 16, 16, True, "RE", 2),
        (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1),
        (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ),
}
# The classifier's hidden width (torchvision `last_channel`), for parameter counts only.
_LAST_CHANNEL = {"small": 1024, "large": 1280}
_NUM_CLASSES = 1000
_ACT = {"RE": "Relu", "HS": "HardSwish"}


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """torchvision's channel rounding: nearest multiple of `divisor`, never 10% below `v`."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class ConvLayer:
    """Conv2dNormActivation: weight `{prefix}.0.weight`, BatchNorm `{prefix}.1.*`."""

    prefix: str
    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    act: Optional[str]  # ONNX op name or None

    @property
    def bn(self) -> str:
        return f"{self.prefix}.1"


@dataclass(frozen=True)
class SELayer:
    """SqueezeExcitation: `{prefix}.fc1.*` and `{prefix}.fc2.*` (1x1 convs with bias)."""

    prefix: str
    channels: int
    squeeze: int


Layer = Union[ConvLayer, SELayer]


@dataclass(frozen=True)
class Stage:
    """One entry of torchvision's `features` Sequential."""

    layers: tuple
    residual: bool


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown MobileNet-V3 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def stages(variant: str) -> list[Stage]:
    """The network as torchvision lays it out, `features.0` to `features.{last}`."""
    _check_variant(variant)
    table = _BNECK[variant]
    out: list[Stage] = [Stage((ConvLayer("features.0", 3, table[0][0], 3, 2, 1, "HardSwish"),), False)]
    for index, (cin, k, exp, cout, use_se, act, stride) in enumerate(table, start=1):
        base = f"features.{index}.block"
        layers: list[Layer] = []
        if exp != cin:
            layers.append(ConvLayer(f"{base}.{len(layers)}", cin, exp, 1, 1, 1, _ACT[act]))
        layers.append(ConvLayer(f"{base}.{len(layers)}", exp, exp, k, stride, exp, _ACT[act]))
        if use_se:
            layers.append(SELayer(f"{base}.{len(layers)}", exp, _make_divisible(exp // 4, 8)))
        layers.append(ConvLayer(f"{base}.{len(layers)}", exp, cout, 1, 1, 1, None))
        out.append(Stage(tuple(layers), stride == 1 and cin == cout))
    lastc = table[-1][3]
    out.append(Stage((ConvLayer(f"features.{len(table) + 1}", lastc, 6 * lastc, 1, 1, 1, "HardSwish"),),
                     False))
    return out


def feature_shapes(variant: str) -> dict[str, tuple]:
    """Every `features.*` key torchvision has (except `num_batches_tracked`) -> its shape."""
    shapes: dict[str, tuple] = {}
    for stage in stages(variant):
        for layer in stage.layers:
            if isinstance(layer, ConvLayer):
                shapes[f"{layer.prefix}.0.weight"] = (layer.cout, layer.cin // layer.groups,
                                                      layer.kernel, layer.kernel)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{layer.bn}.{name}"] = (layer.cout,)
            else:
                c, s = layer.channels, layer.squeeze
                shapes[f"{layer.prefix}.fc1.weight"] = (s, c, 1, 1)
                shapes[f"{layer.prefix}.fc1.bias"] = (s,)
                shapes[f"{layer.prefix}.fc2.weight"] = (c, s, 1, 1)
                shapes[f"{layer.prefix}.fc2.bias"] = (c,)
    return shapes


def count_parameters(variant: str, include_classifier: bool = False) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted).

    With the classifier these are torchvision's published totals: Small 2,542,856 and
    Large 5,483,032. Without it (the exported backbone): Small 927,008, Large 2,971,952.
    """
    total = sum(int(np.prod(shape)) for key, shape in feature_shapes(variant).items()
                if not key.endswith(("running_mean", "running_var")))
    if include_classifier:
        f, hidden = FEATURE_SIZE[variant], _LAST_CHANNEL[variant]
        total += f * hidden + hidden + hidden * _NUM_CLASSES + _NUM_CLASSES
    return total


def init_state_dict(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic weights following torchvision's init scheme (features only, float32).

    Convs (SE fc1/fc2 included): kaiming normal, mode fan_out, gain sqrt(2); conv biases 0.
    BatchNorm: weight 1, bias 0, running mean 0, running variance 1. With these statistics
    the features are nearly zero; run `export.graphs.bn_stats.reestimate_bn` on real frames.
    """
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    for key, shape in feature_shapes(variant).items():
        if key.endswith("weight") and len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            sd[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(np.float32)
        elif key.endswith(("weight", "running_var")):
            sd[key] = np.ones(shape, np.float32)
        else:
            sd[key] = np.zeros(shape, np.float32)
    return sd


def _f32(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    return np.asarray(sd[key], dtype=np.float32)


def emit_conv(g: GraphBuilder, x: str, layer: ConvLayer, sd: Mapping[str, np.ndarray],
              fold_bn: bool, pre_bn: bool = False) -> str:
    """Conv + BatchNorm + activation; with `pre_bn` only the Conv (its output feeds BN stats)."""
    weight = _f32(sd, f"{layer.prefix}.0.weight")
    pad = (layer.kernel - 1) // 2
    conv_attrs = dict(kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                      pads=[pad] * 4, group=layer.groups)
    bn = layer.bn
    if pre_bn or not fold_bn:
        w = g.initializer(f"{layer.prefix}.0.weight", weight)
        y = g.node("Conv", [x, w], name=f"{layer.prefix}.0", **conv_attrs)
        if pre_bn:
            return y
        params = [g.initializer(f"{bn}.{n}", _f32(sd, f"{bn}.{n}"))
                  for n in ("weight", "bias", "running_mean", "running_var")]
        y = g.node("BatchNormalization", [y, *params], name=bn, epsilon=BN_EPS)
    else:
        f64 = {n: np.asarray(sd[f"{bn}.{n}"], dtype=np.float64)
               for n in ("weight", "bias", "running_mean", "running_var")}
        scale = f64["weight"] / np.sqrt(f64["running_var"] + BN_EPS)
        bias = f64["bias"] - f64["running_mean"] * scale
        w = g.initializer(f"{layer.prefix}.0.weight", weight.astype(np.float64) * scale[:, None, None, None])
        b = g.initializer(f"{layer.prefix}.0.bias", bias)
        y = g.node("Conv", [x, w, b], name=f"{layer.prefix}.0", **conv_attrs)
    if layer.act is not None:
        y = g.node(layer.act, [y], name=f"{layer.prefix}.act")
    return y


def emit_se(g: GraphBuilder, x: str, layer: SELayer, sd: Mapping[str, np.ndarray]) -> str:
    p = layer.prefix
    s = g.node("GlobalAveragePool", [x], name=f"{p}.pool")
    s = g.node("Conv", [s, g.initializer(f"{p}.fc1.weight", _f32(sd, f"{p}.fc1.weight")),
                        g.initializer(f"{p}.fc1.bias", _f32(sd, f"{p}.fc1.bias"))], name=f"{p}.fc1")
    s = g.node("Relu", [s], name=f"{p}.relu")
    s = g.node("Conv", [s, g.initializer(f"{p}.fc2.weight", _f32(sd, f"{p}.fc2.weight")),
                        g.initializer(f"{p}.fc2.bias", _f32(sd, f"{p}.fc2.bias"))], name=f"{p}.fc2")
    # torch.nn.Hardsigmoid = clip(x / 6 + 1/2, 0, 1); ONNX's default alpha (0.2) differs.
    s = g.node("HardSigmoid", [s], name=f"{p}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
    return g.node("Mul", [x, s], name=f"{p}.scale")


def emit_stage(g: GraphBuilder, x: str, stage: Stage, sd: Mapping[str, np.ndarray],
               fold_bn: bool, stop_before_bn: Optional[int] = None) -> str:
    """Emit one `features.i`; `stop_before_bn=j` returns layer j's Conv output instead."""
    y = x
    for j, layer in enumerate(stage.layers):
        if isinstance(layer, ConvLayer):
            y = emit_conv(g, y, layer, sd, fold_bn, pre_bn=(j == stop_before_bn))
            if j == stop_before_bn:
                return y
        else:
            y = emit_se(g, y, layer, sd)
    if stage.residual:
        y = g.node("Add", [y, x], name=f"{stage.layers[0].prefix.rsplit('.', 2)[0]}.add")
    return y


def build_backbone(variant: str, state_dict: Mapping[str, np.ndarray],
                   input_size: Sequence[int] = (224, 224), fold_bn: bool = True,
                   input_name: str = "image", output_name: str = "features") -> onnx.ModelProto:
    """The feature extractor `image` [batch, 3, H, W] -> `features` [batch, F].

    `input_size` is (height, width). The batch dimension is dynamic ("batch"). The state
    dict may hold extra keys (classifier, num_batches_tracked); missing or mis-shaped
    `features.*` keys raise WeightsError listing all of them.
    """
    all_stages = stages(variant)
    check_state_dict(state_dict, feature_shapes(variant))
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise ValueError(f"input_size must be positive (height, width), got {tuple(input_size)}")
    g = GraphBuilder(f"mobilenet_v3_{variant}")
    y = g.input(input_name, ["batch", 3, height, width])
    for stage in all_stages:
        y = emit_stage(g, y, stage, state_dict, fold_bn)
    y = g.node("GlobalAveragePool", [y], name="avgpool")
    y = g.node("Flatten", [y], name="flatten", axis=1)
    g.output(y, output_name, ["batch", FEATURE_SIZE[variant]])
    return g.model(doc=f"torchvision mobilenet_v3_{variant} features, "
                       f"{'BatchNorm folded' if fold_bn else 'explicit BatchNorm'}")
