"""Pretrain the default backbone (MobileNet-V3-Small) on synthetic images of the demo world.

Why: a seeded backbone, even with BatchNorm statistics re-estimated, is dominated by pixel
noise (±1 grey level of noise moves its pooled features ~11% between frames of a still
scene), so a GRU on top cannot tell which way an object moves or turns. A few minutes of
training on images of one object over a blurred random background with pixel noise,
regressing the factors the demo's temporal classes depend on, gives features that encode
them and ignore the noise.

What: images are frames of `runtime.sources.demo.Clip` (random class, shape, colour, size,
position, orientation, background and noise; rendered at the demo's 320x240) prepared by
the runtime's own `Preprocessor`, so the backbone is trained on exactly what deployment
feeds it. Targets per image: object centre (x, y), orientation (cos/sin of the angle for
asymmetric shapes, of twice the angle for every shape), radius, object colour, background
mean colour (regression, mean squared error) and the shape (6-way cross-entropy). The
readout is one linear layer on the pooled features, so the features must carry these
factors linearly, which is what a GRU input layer can use.

After training, every BatchNorm's running statistics are re-estimated on fresh images
with `export.graphs.bn_stats.reestimate_bn` (the ONNX path the export uses), the features-only
state dict is written in torchvision's key format (`.safetensors`), and a JSON record of
how it was made is written beside it (`<file>.json`).

    edge-export pretrain --out export/assets/mobilenet_v3_small_synthetic.safetensors
"""
from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, TextIO

import numpy as np
import onnxruntime as ort

from export.graphs.bn_stats import reestimate_bn
from export.graphs.mobilenet import build_backbone
from export.graphs.weights import save_state_dict
from export.training.torch_mobilenet import build_torch_backbone, seeded_torch, state_dict_numpy
from runtime.files import atomic_write_json, sha256_file
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor
from runtime.sources.demo import CLASSES, SHAPES, WORLD_VERSION, Clip

# Shapes whose outline is symmetric under a half turn: their angle is only known modulo pi.
_HALF_TURN_SYMMETRIC = ("rectangle", "ellipse")
REGRESSION_TARGETS = ("x", "y", "cos", "sin", "cos2", "sin2", "radius",
                      "obj_b", "obj_g", "obj_r", "bg_b", "bg_g", "bg_r")
NUM_REGRESSION = len(REGRESSION_TARGETS)


@dataclass(frozen=True)
class PretrainOptions:
    out: Path = Path("export/assets/mobilenet_v3_small_synthetic.safetensors")
    variant: str = "small"
    steps: int = 900
    batch: int = 48
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 30
    seed: int = 0
    input_size: tuple[int, int] = (224, 224)  # network input (height, width)
    render_size: tuple[int, int] = (320, 240)  # demo frame (width, height)
    bn_frames: int = 256  # fresh images for the final BatchNorm re-estimation
    threads: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 100


def synthetic_batch(rng: np.random.Generator, n: int, preprocess: Preprocessor,
                    render_size: tuple[int, int] = (320, 240)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n preprocessed demo-world images [n, 3, H, W], regression targets [n, R], mask [n, R], shapes [n]."""
    width, height = render_size
    images = np.empty((n, *preprocess.input_shape), np.float32)
    targets = np.zeros((n, NUM_REGRESSION), np.float32)
    mask = np.ones((n, NUM_REGRESSION), np.float32)
    shapes = np.zeros(n, np.int64)
    frame = np.empty((height, width, 3), np.uint8)
    scale = min(width, height)
    for i in range(n):
        label = CLASSES[rng.integers(len(CLASSES))]
        clip = Clip(rng, label, 48, width, height)
        t = int(rng.integers(clip.num_frames))
        clip.render(t, frame)
        preprocess(frame, images[i])
        cx, cy = clip.centres[t]
        angle = float(clip.angles[t])
        bg = np.asarray(clip.background.reshape(-1, 3).mean(axis=0), np.float32)
        targets[i] = (2 * cx / width - 1, 2 * cy / height - 1,
                      math.cos(angle), math.sin(angle), math.cos(2 * angle), math.sin(2 * angle),
                      (clip.radius / scale - 0.2) / 0.035,
                      *(clip.colours[t].astype(np.float32) / 127.5 - 1), *(bg / 127.5 - 1))
        if clip.shape in _HALF_TURN_SYMMETRIC:
            mask[i, 2:4] = 0.0
        shapes[i] = SHAPES.index(clip.shape)
    return images, targets, mask, shapes


def _lr_at(step: int, options: PretrainOptions) -> float:
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return options.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(options: PretrainOptions, log: Optional[TextIO] = None) -> dict:
    """Train, re-estimate BatchNorm, write `options.out` (+ `.json` record); return the record."""
    log = log or sys.stderr
    torch, rng = seeded_torch(options.seed, options.threads)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width = options.input_size
    preprocess = Preprocessor(InputSpec(height=height, width=width))

    backbone = build_torch_backbone(options.variant)
    head = torch.nn.Linear(backbone.feature_size, NUM_REGRESSION + len(SHAPES))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    started = time.perf_counter()
    history = []
    running = None
    backbone.train()
    for step in range(options.steps):
        images, targets, mask, shapes = synthetic_batch(rng, options.batch, preprocess, options.render_size)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, options)
        out_all = head(backbone(torch.from_numpy(images)))
        regression = out_all[:, :NUM_REGRESSION]
        m = torch.from_numpy(mask)
        mse = ((regression - torch.from_numpy(targets)) ** 2 * m).sum() / m.sum() * NUM_REGRESSION / 4
        ce = torch.nn.functional.cross_entropy(out_all[:, NUM_REGRESSION:], torch.from_numpy(shapes))
        loss = mse + ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values = np.array([float(loss.detach()), float(mse.detach()), float(ce.detach())])
        running = values if running is None else 0.9 * running + 0.1 * values
        if (step + 1) % options.log_every == 0 or step + 1 == options.steps:
            took = time.perf_counter() - started
            eta = took / (step + 1) * (options.steps - step - 1)
            history.append({"step": step + 1, "loss": round(running[0], 5), "mse": round(running[1], 5),
                            "ce": round(running[2], 5), "seconds": round(took, 1)})
            print(f"pretrain step {step + 1}/{options.steps}  loss {running[0]:.4f} (mse {running[1]:.4f}, "
                  f"shape ce {running[2]:.4f})  lr {_lr_at(step, options):.2e}  {took:.0f} s, eta {eta:.0f} s",
                  file=log, flush=True)
        if options.checkpoint_every and (step + 1) % options.checkpoint_every == 0 and step + 1 < options.steps:
            save_state_dict(state_dict_numpy(backbone), out.with_name(out.stem + ".partial.safetensors"))
    train_seconds = time.perf_counter() - started

    print(f"pretrain: re-estimating BatchNorm statistics on {options.bn_frames} fresh images", file=log, flush=True)
    bn_images = synthetic_batch(np.random.default_rng(options.seed + 1), options.bn_frames, preprocess,
                                options.render_size)[0]
    state = reestimate_bn(options.variant, state_dict_numpy(backbone), bn_images)
    evaluation = _evaluate(options, state, head, preprocess, torch)
    save_state_dict(state, out)
    partial = out.with_name(out.stem + ".partial.safetensors")
    partial.unlink(missing_ok=True)
    record = {
        "what": f"MobileNet-V3-{options.variant.capitalize()} features (torchvision keys), pretrained on "
                "synthetic demo-world images: regression of object position, orientation, size, colour and "
                "background colour, and shape classification, from a linear readout of the pooled features",
        "command": "edge-export pretrain " + " ".join(_cli_args(options)),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "train_seconds": round(train_seconds, 1),
        "images_seen": options.steps * options.batch,
        "history": history[-5:],
        "evaluation": evaluation,
        "sha256": sha256_file(out),
        "demo_world_version": WORLD_VERSION,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
    }
    atomic_write_json(out.with_suffix(".json"), record)
    print(f"pretrain: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}", file=log, flush=True)
    return record


def _evaluate(options: PretrainOptions, state, head, preprocess, torch) -> dict:
    """Readout error on fresh images through the exported ONNX graph (BatchNorm folded)."""
    images, targets, mask, shapes = synthetic_batch(np.random.default_rng(options.seed + 2), 96, preprocess,
                                                    options.render_size)
    session = ort.InferenceSession(build_backbone(options.variant, state, options.input_size).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    features = np.concatenate([session.run(None, {"image": images[i:i + 16]})[0] for i in range(0, len(images), 16)])
    with torch.no_grad():
        out = head(torch.from_numpy(features)).numpy()
    err = np.abs(out[:, :NUM_REGRESSION] - targets)
    x_px = float(np.mean(err[:, 0]) * options.render_size[0] / 2)
    return {"images": len(images), "x_mean_abs_error_px": round(x_px, 2),
            "regression_mae": {name: round(float(np.sum(err[:, i] * mask[:, i]) / max(1.0, mask[:, i].sum())), 4)
                               for i, name in enumerate(REGRESSION_TARGETS)},
            "shape_accuracy": round(float(np.mean(out[:, NUM_REGRESSION:].argmax(1) == shapes)), 4)}


def _cli_args(options: PretrainOptions) -> list[str]:
    defaults = PretrainOptions()
    args = ["--out", str(options.out)]
    for name, flag in (("steps", "--steps"), ("batch", "--batch"), ("lr", "--lr"), ("seed", "--seed")):
        if getattr(options, name) != getattr(defaults, name):
            args += [flag, str(getattr(options, name))]
    if options.input_size != defaults.input_size:
        args += ["--input-size", *map(str, options.input_size)]
    return args
