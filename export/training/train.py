"""Train the temporal head (a GRU or LSTM, one or two layers, + linear head) on labelled clips, the backbone frozen.

    edge-export train --clips clips/ --engines engines     # a folder of class sub-folders
    edge-export train --clips labels.csv                    # rows of path,label
    edge-export train --clips demo                          # the synthetic demo task

Steps: list the clips (`export.training.clips`); extract their features once through the backbone
engine that will be deployed (the manifest's INT8 ONNX by default; `export.training.feature_cache`,
cached on disk); split train/validation *by clip*, stratified per class, seeded; train
with PyTorch (CPU is enough); keep the epoch with the best validation accuracy (early
stopping); fold the feature standardisation into the first layer's input weights; write the
weights (safetensors, PyTorch's names), the head engines and the manifest (labels, W, cell,
layers, state names, a training summary) atomically into the engines folder.

`--cell gru|lstm` and `--layers 1|2` choose the head (default: the one the engines have);
its PyTorch twin is `nn.GRU`/`nn.LSTM(num_layers=layers)` + `nn.Linear`, whose weights are
what `export.graphs.head` builds the engines from.

What a training sample is, and why:
- a **window**: W consecutive *processed* frames of one clip from a zero state, loss at
  the last step (`edge-run --emit window`);
- a **stream**: segments of random clips back to back, the state carried across clip
  boundaries, loss at every step whose last W frames share one label
  (`edge-run --emit step`, scored as `--score` scores it);
- **frame drops**: in most samples each frame is first dropped with a random probability
  up to `max_drop`, because the runtime drops stale frames under load; the head then
  holds its accuracy when frames are skipped. Validation is reported with and without
  30% drops.

PyTorch is the optional extra `train`, imported lazily through `torch_mobilenet.require_torch`.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, TextIO

import numpy as np

from export.errors import ExportError
from export.publish import publish_head
from export.training.augment import DEMO_FLIP_MAP, parse_flip_map
from export.training.clip_quality import check_on_clips, measure_on_clips
from export.training.clips import ClipRef, ClipSet, augmented_views, find_clips
from export.training.evaluate import kept_frames, label_runs, report, window_accuracy
from export.training.feature_cache import FeatureExtractor
from export.training.torch_mobilenet import require_torch, seeded_torch
from runtime import validation as valid
from runtime.files import atomic_write_json
from runtime.manifest import BACKBONE, ManifestError, load_manifest

if TYPE_CHECKING:  # annotations only: torch is imported by require_torch, when training starts
    import torch

DEFAULT_MAX_FAILED = 0.1  # abort when more than this fraction of clips cannot be read
EVAL_DROP = 0.3


class TrainError(ExportError, RuntimeError):
    """Training cannot go on; the message says why and what to change (bad input, exit 2)."""


@dataclass
class TrainOptions:
    clips: str = "demo"
    engines: Path = Path("engines")
    out: Optional[Path] = None  # engines folder to update (default: `engines`)
    precision: str = "int8"  # the backbone the features come from: the one that will be deployed
    window: Optional[int] = None  # default: the manifest's
    hidden: Optional[int] = None  # default: the manifest's
    cell: Optional[str] = None  # "gru" or "lstm"; default: the manifest's
    layers: Optional[int] = None  # 1 or 2; default: the manifest's
    val_fraction: float = 0.2
    epochs: int = 40
    patience: int = 10
    iterations: int = 100  # optimisation steps per epoch
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_drop: float = 0.5
    drop_samples: float = 0.7  # fraction of samples with random frame drops
    input_dropout: float = 0.1
    static_jitter: float = 0.0  # std of a per-clip constant offset added to standardised features
    swap_appearance: float = 0.8  # fraction of segments whose clip mean is replaced by another clip's
    project: int = 64  # GRU input: the top-K directions in which features change within clips (0: all, standardised)
    seed: int = 0
    threads: Optional[int] = None
    cache_dir: Optional[Path] = None
    max_failed: float = DEFAULT_MAX_FAILED
    compare_fp32: bool = True  # INT8 vs FP32 features on the val clips, and the head on FP32's features
    views: int = 0  # augmented views per training clip (export.training.augment), each cached
    flip_map: Optional[str] = None  # "a:b,c:d" labels swapped by a horizontal flip; "none": no flips (default: demo's)
    min_cosine: Optional[float] = None  # fail when INT8's cosine to FP32 on the clips is below (None: warn under the gate)
    weights_out: Optional[Path] = None  # extra copy of the trained weights
    progress: bool = True
    demo_seed: int = 0
    demo_frames: int = 48
    demo_size: tuple[int, int] = (320, 240)
    command: str = ""


@dataclass
class Dataset:
    labels: tuple[str, ...]
    features: list[np.ndarray]
    targets: list[int]
    clips: list[ClipRef]
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)


def split_by_clip(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified train/validation split of clip indices (never of frames); >= 1 val clip per class when possible."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == label]
        members = [members[i] for i in rng.permutation(len(members))]
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(1, n_val), len(members) - 1)
        else:
            n_val = 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


class _Sampler:
    """Random training samples (windows and streams) with frame drops, from training clips."""

    def __init__(self, data: Dataset, indices: list[int], window: int, options: TrainOptions, rng) -> None:
        self.data, self.window, self.options, self.rng = data, window, options, rng
        self.by_class: dict[int, list[int]] = {}
        for i in indices:
            self.by_class.setdefault(data.targets[i], []).append(i)
        self.classes = sorted(self.by_class)
        self.indices = list(indices)
        self.means = {i: data.features[i].mean(axis=0) for i in indices}

    def _clip(self) -> int:
        members = self.by_class[self.classes[self.rng.integers(len(self.classes))]]
        return members[self.rng.integers(len(members))]

    def _kept(self, i: int) -> np.ndarray:
        feats = self.data.features[i]
        drop = self.rng.uniform(0.0, self.options.max_drop) if self.rng.random() < self.options.drop_samples else 0.0
        kept = feats[kept_frames(len(feats), drop, self.rng)]
        if self.options.swap_appearance > 0 and self.rng.random() < self.options.swap_appearance:
            # What a clip looks like on average is not its class: only how it changes is. Moving a
            # clip's frames onto another clip's mean keeps the changes and removes the look.
            other = self.indices[self.rng.integers(len(self.indices))]
            kept = kept + (self.means[other] - self.means[i])
        if self.options.static_jitter > 0:  # what stays constant over a clip must not be what identifies it
            kept = kept + (self.options.static_jitter * self.rng.standard_normal(kept.shape[1])).astype(np.float32)
        return kept

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        while len(xs) < n:
            i = self._clip()
            kept = self._kept(i)
            if len(kept) < self.window:
                continue
            start = int(self.rng.integers(len(kept) - self.window + 1))
            xs.append(kept[start:start + self.window])
            ys.append(self.data.targets[i])
        return np.stack(xs), np.asarray(ys)

    def streams(self, n: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(n):
            parts, labels, total = [], [], 0
            first = True
            while total < length:
                i = self._clip()
                kept = self._kept(i)
                start = int(self.rng.integers(len(kept))) if first else 0
                first = False
                seg = kept[start:]
                parts.append(seg)
                labels.append(np.full(len(seg), self.data.targets[i]))
                total += len(seg)
            xs.append(np.concatenate(parts)[:length])
            ys.append(np.concatenate(labels)[:length])
        y = np.stack(ys)
        mask = np.stack([label_runs(row) >= self.window for row in y])
        return np.stack(xs), y, mask


def _torch_head(torch, cell: str, layers: int, F: int, H: int, C: int, input_dropout: float):
    """The PyTorch twin of the deployed head: `rnn` (nn.GRU or nn.LSTM, `layers` deep) and `head` (Linear)."""
    nn = torch.nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(input_dropout)
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(F, H, num_layers=layers, batch_first=True)
            self.head = nn.Linear(H, C)

        def forward(self, x):
            out, _ = self.rnn(self.drop(x))
            return self.head(out)  # logits at every step [N, T, C] from the top layer

    return Head()


def input_projection(features: Sequence[np.ndarray], k: int, lag: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], P [K, F]): the GRU's input is (x - mean) @ P.T, folded into its weights afterwards.

    With k > 0, P holds the top-k principal directions of *within-clip* changes
    (x[t + lag] - x[t]), each scaled to unit variance: what moves over time, not what
    tells one clip's look from another's, and far fewer inputs to fit. With k == 0 it is
    the per-feature standardisation.
    """
    stacked = np.concatenate(features).astype(np.float64)
    mean = stacked.mean(axis=0)
    if k <= 0 or k >= stacked.shape[1]:
        std = np.maximum(stacked.std(axis=0), 1e-3 * max(float(stacked.std()), 1e-12))
        return mean, np.diag(1.0 / std)
    diffs = np.concatenate([f[lag:] - f[:-lag] for f in features if len(f) > lag] or
                           [f[1:] - f[:-1] for f in features]).astype(np.float64)
    cov = diffs.T @ diffs / max(1, len(diffs))
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:k]
    scale = np.sqrt(np.maximum(values[order], 1e-12 * values.max()))
    return mean, vectors[:, order].T / scale[:, None]


def fold_weights(model: torch.nn.Module, mean: np.ndarray, projection: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical head weights that take raw features: the input projection folded into layer 0's weight_ih/bias_ih.

    Keys as `export.graphs.head` names them: the cell's (`weight_ih`, ...) for one layer,
    `nn.GRU`'s (`weight_ih_l0`, ... `bias_hh_l1`) for two.
    """
    sd = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    layers = model.rnn.num_layers
    out = {}
    for layer in range(layers):
        suffix = "" if layers == 1 else f"_l{layer}"
        w_ih, b_ih = sd[f"rnn.weight_ih_l{layer}"], sd[f"rnn.bias_ih_l{layer}"]
        if layer == 0:  # only the first layer sees the features
            w_ih = w_ih @ projection
            b_ih = b_ih - w_ih @ mean
        out[f"weight_ih{suffix}"], out[f"bias_ih{suffix}"] = w_ih, b_ih
        out[f"weight_hh{suffix}"], out[f"bias_hh{suffix}"] = sd[f"rnn.weight_hh_l{layer}"], sd[f"rnn.bias_hh_l{layer}"]
    out["head.weight"], out["head.bias"] = sd["head.weight"], sd["head.bias"]
    return {key: value.astype(np.float32) for key, value in out.items()}


def train_head(data: Dataset, window: int, hidden: int, options: TrainOptions, log: Optional[TextIO] = None,
               cell: str = "gru", layers: int = 1) -> tuple[dict, dict]:
    """Train on `data.train`, early-stop on `data.val`; returns (canonical weights, history summary)."""
    log = log or sys.stderr
    torch, rng = seeded_torch(options.seed, options.threads)
    C = len(data.labels)
    mean, projection = input_projection([data.features[i] for i in data.train], options.project)
    norm = [((f - mean) @ projection.T).astype(np.float32) for f in data.features]
    F = projection.shape[0]
    normed = Dataset(data.labels, norm, data.targets, data.clips, data.train, data.val)
    sampler = _Sampler(normed, data.train, window, options, rng)
    model = _torch_head(torch, cell, layers, F, hidden, C, options.input_dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    total_steps = options.epochs * options.iterations
    val_feats = [norm[i] for i in data.val] or [norm[i] for i in data.train]
    val_targets = [data.targets[i] for i in data.val] or [data.targets[i] for i in data.train]
    if not data.val:
        print("train: WARNING no validation clips (too few clips per class); early stopping uses training clips",
              file=log)
    best, best_key, best_epoch, history = None, None, -1, []
    started = time.perf_counter()
    stream_length = 3 * window
    step = 0
    for epoch in range(options.epochs):
        model.train()
        losses = []
        for _ in range(options.iterations):
            lr = options.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            xw, yw = sampler.windows(options.batch)
            xs, ys, ms = sampler.streams(max(1, options.batch // 4), stream_length)
            logits_w = model(torch.from_numpy(xw))[:, -1]
            loss_w = torch.nn.functional.cross_entropy(logits_w, torch.from_numpy(yw))
            logits_s = model(torch.from_numpy(xs))
            mask = torch.from_numpy(ms)
            if bool(mask.any()):
                loss_s = torch.nn.functional.cross_entropy(logits_s[mask], torch.from_numpy(ys)[mask])
            else:
                loss_s = logits_s.sum() * 0.0
            loss = loss_w + loss_s
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        model.eval()
        weights = fold_weights(model, np.zeros(F), np.eye(F))  # on projected features
        clean, _ = window_accuracy(weights, val_feats, val_targets, window, stride=4, seed=options.seed)
        dropped, _ = window_accuracy(weights, val_feats, val_targets, window, stride=4, drop=EVAL_DROP,
                                     seed=options.seed + 1)
        score = 0.5 * (clean + dropped)
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                        "val_window": round(clean, 4), f"val_window_drop{int(EVAL_DROP * 100)}": round(dropped, 4)})
        print(f"train epoch {epoch + 1}/{options.epochs}: loss {np.mean(losses):.4f}, validation window accuracy "
              f"{clean:.3f} ({dropped:.3f} with {int(EVAL_DROP * 100)}% drops)", file=log, flush=True)
        key = (score, -np.mean(losses))
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch + 1
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= options.patience:
            print(f"train: early stop, no better validation accuracy for {options.patience} epochs "
                  f"(best epoch {best_epoch})", file=log)
            break
    model.load_state_dict(best)
    summary = {"epochs_run": len(history), "best_epoch": best_epoch, "seconds": round(time.perf_counter() - started, 1),
               "history": history[-3:], "torch": torch.__version__}
    summary["input_projection"] = int(projection.shape[0])
    return fold_weights(model, mean, projection), summary


# ---------------------------------------------------------------------------------------
# The whole command: clips -> features -> head -> engines
# ---------------------------------------------------------------------------------------
def run_training(options: TrainOptions, log: Optional[TextIO] = None) -> dict:
    """`edge-export train`: returns the training summary written into the manifest."""
    log = log or sys.stderr
    require_torch()  # fail before any slow work
    try:
        manifest = load_manifest(options.engines)
    except ManifestError as exc:
        raise TrainError(f"{exc} (training needs built engines: run edge-export --out {options.engines} first)") from exc
    window = int(options.window or manifest.window)
    hidden = int(options.hidden or manifest.hidden_size)
    if window < 1 or hidden < 1:
        raise TrainError("--window and --hidden must be at least 1")
    cell, layers = options.cell or manifest.cell, int(options.layers or manifest.layers)
    if cell not in valid.CELLS:
        raise TrainError(f"unknown --cell {cell!r}; choose from {', '.join(valid.CELLS)}")
    valid.LAYERS.check("--layers", layers)
    clip_set = find_clips(options.clips, demo_seed=options.demo_seed, demo_frames=options.demo_frames,
                          demo_size=options.demo_size)
    entry = manifest.find(BACKBONE, "onnx", options.precision)
    if entry is None:
        have = manifest.precisions(BACKBONE, "onnx")
        raise TrainError(f"the engines in {options.engines} have no {options.precision} ONNX backbone (have: "
                         f"{', '.join(have)}); pass --precision {have[0] if have else 'fp32'}")
    print(f"train: {len(clip_set.clips)} clips in {len(clip_set.labels)} classes from {clip_set.source}; features "
          f"through {entry.file} ({options.precision})", file=log, flush=True)
    extractor = FeatureExtractor(manifest.path_of(entry), manifest.input, options.cache_dir, options.threads)
    extracted = extractor.extract(clip_set.clips, progress=options.progress, desc=f"features ({options.precision})")
    data, skipped = _dataset(clip_set, extracted, window, options, log)
    print(f"train: {extracted.cached} of {len(clip_set.clips)} clips from the feature cache ({extractor.cache})",
          file=log, flush=True)

    data.train, data.val = split_by_clip(data.targets, options.val_fraction, options.seed)
    on_clips, fp32_val = _int8_on_clips(manifest, data, clip_set.source, options, log)  # before training: fail fast
    per_class = {label: 0 for label in data.labels}
    for t in data.targets:
        per_class[data.labels[t]] += 1
    originals = {"train_clips": len(data.train), "frames": int(sum(len(f) for f in data.features))}
    augmentation = _add_views(data, extractor, options, log)
    weights, summary = train_head(data, window, hidden, options, log, cell=cell, layers=layers)
    val_feats = [data.features[i] for i in data.val]
    val_targets = [data.targets[i] for i in data.val]
    figures = report(weights, val_feats, val_targets, window, drop=EVAL_DROP, seed=options.seed) if data.val else {}
    quality: dict[str, Any] = {}
    if options.compare_fp32 and data.val and fp32_val is not None and options.precision != "fp32":
        quality = _fp32_comparison(options, fp32_val, val_targets, weights, window, figures)
    training = {
        "clips": clip_set.source,
        "labels": list(data.labels),
        "window": window,
        "hidden": hidden,
        "cell": cell,
        "layers": layers,
        "clips_per_class": per_class,
        **originals,  # the clips themselves; their augmented views are counted under "augmentation"
        "validation_clips": len(data.val),
        "skipped": skipped,
        "backbone": {"file": entry.file, "precision": options.precision, "sha256": entry.sha256},
        "validation": figures,
        "seed": options.seed,
        "max_drop": options.max_drop,
        "augmentation": augmentation,
        **summary,
        "command": options.command,
    }
    out = Path(options.out or options.engines)
    publish_head(Path(options.engines), out, weights, data.labels, window, training, quality, log=log,
                 weights_out=options.weights_out, clip_cosine=on_clips)
    if options.weights_out is not None:  # the record beside the weights: what `edge-export` reads for a shipped head
        atomic_write_json(Path(options.weights_out).with_suffix(".json"), {**training, "task_accuracy": quality})
    _print_report(figures, quality, log)
    return training


def _dataset(clip_set: ClipSet, extracted, window: int, options: TrainOptions, log) -> tuple[Dataset, dict]:
    failed = [{"clip": c.name, "reason": r} for c, r in extracted.failed]
    total = len(clip_set.clips)
    for item in failed:
        print(f"train: skipped unreadable clip {item['clip']}: {item['reason']}", file=log)
    if total and len(failed) / total > options.max_failed:
        raise TrainError(f"{len(failed)} of {total} clips could not be read (more than {options.max_failed:.0%}; "
                         f"listed above): fix or remove them, or raise --max-failed")
    short = []
    feats, targets, clips = [], [], []
    for f, clip in zip(extracted.features, extracted.clips):
        if len(f) < window:
            short.append({"clip": clip.name, "frames": int(len(f))})
            print(f"train: skipped clip {clip.name}: {len(f)} frames, shorter than the window W={window}", file=log)
            continue
        feats.append(f)
        targets.append(clip_set.labels.index(clip.label))
        clips.append(clip)
    present = {clip_set.labels[t] for t in targets}
    missing = [label for label in clip_set.labels if label not in present]
    if missing:
        raise TrainError(f"no usable clip (readable and at least W={window} frames) for class(es) "
                         f"{', '.join(missing)}; add clips, or lower --window")
    if len(present) < 2:
        raise TrainError("only one class has usable clips; a classifier needs at least 2")
    return Dataset(clip_set.labels, feats, targets, clips), {"unreadable": failed, "shorter_than_window": short}


def _add_views(data: Dataset, extractor: FeatureExtractor, options: TrainOptions, log) -> dict[str, Any]:
    """`options.views` augmented views of every training clip (never of a validation clip), added to training."""
    if options.views < 1:
        return {"views": 0}
    flip_map = flip_map_for(options, data.labels)
    rng = np.random.default_rng([options.seed, 1])
    views = [view for i in data.train for view in augmented_views(data.clips[i], options.views, rng, flip_map)]
    started = time.perf_counter()
    extracted = extractor.extract(views, progress=options.progress, desc=f"features ({options.views} views per clip)")
    seconds = time.perf_counter() - started
    for feats, clip in zip(extracted.features, extracted.clips):
        data.train.append(len(data.features))
        data.features.append(feats)
        data.targets.append(data.labels.index(clip.label))
        data.clips.append(clip)
    flipped = sum(clip.view.flip for clip in extracted.clips)
    pairs = ", ".join(f"{a}<->{b}" for a, b in (flip_map or {}).items() if a < b) or "no flip map: flips off"
    print(f"train: {len(extracted.clips)} augmented views of {len(views) // options.views} training clips "
          f"({flipped} mirrored; {pairs}) in {seconds:.1f} s, {extracted.cached} from the cache", file=log, flush=True)
    return {"views": options.views, "view_clips": len(extracted.clips), "mirrored": int(flipped),
            "flip_map": flip_map or None, "extraction_seconds": round(seconds, 1), "from_cache": extracted.cached,
            "frames": int(sum(len(f) for f in extracted.features))}


def flip_map_for(options: TrainOptions, labels: Sequence[str]) -> Optional[dict[str, str]]:
    """The label map under a horizontal flip: --flip-map, else the demo's for demo clips, else none (flips off)."""
    if options.flip_map is not None:
        return None if options.flip_map.strip().lower() == "none" else parse_flip_map(options.flip_map, labels)
    if options.clips.strip().startswith("demo") and set(DEMO_FLIP_MAP) <= set(labels):
        return {**DEMO_FLIP_MAP, **{b: a for a, b in DEMO_FLIP_MAP.items()}}
    return None


def _int8_on_clips(manifest, data: Dataset, source: str, options: TrainOptions, log) -> tuple[dict, Optional[list]]:
    """INT8 vs FP32 features on the validation clips (training clips when none): (record, FP32 features or None)."""
    if not options.compare_fp32:
        return {}, None
    scored = data.val or data.train
    what = f"{len(scored)} {'validation' if data.val else 'training'} clips of {source}"
    record, fp32 = measure_on_clips(manifest, [data.clips[i] for i in scored], [data.features[i] for i in scored],
                                    options.precision, what, options.cache_dir, options.threads, options.progress)
    return check_on_clips(record, manifest, options.min_cosine, log), (fp32 if data.val else None)


def _fp32_comparison(options, fp32_features, val_targets, weights, window, figures) -> dict:
    """The same head on the FP32 backbone's features of the validation clips: the task cost of INT8."""
    pairs = [(f, t) for f, t in zip(fp32_features, val_targets) if f is not None]
    acc, n = window_accuracy(weights, [p[0] for p in pairs], [p[1] for p in pairs], window, seed=options.seed)
    return {"window_accuracy_" + options.precision: figures.get("window_accuracy"),
            "window_accuracy_fp32": round(acc, 4), "windows": n,
            "head_trained_on": options.precision}


def _print_report(figures: dict, quality: dict, log) -> None:
    if not figures:
        return
    drop = int(EVAL_DROP * 100)
    print(f"train: validation (held-out clips): window accuracy {figures['window_accuracy']:.1%} "
          f"({figures['windows']} windows), {figures[f'window_accuracy_drop{drop}']:.1%} with {drop}% frames dropped; "
          f"step accuracy {figures['step_accuracy']:.1%} ({figures['steps']} steps), "
          f"{figures[f'step_accuracy_drop{drop}']:.1%} with drops; single frame {figures['single_frame_accuracy']:.1%} "
          f"(chance {figures['chance']:.1%})", file=log)
    if quality:
        print(f"train: window accuracy with the FP32 backbone {quality['window_accuracy_fp32']:.1%} "
              f"(head trained on {quality['head_trained_on']} features)", file=log)


def summary_json(training: dict) -> str:
    return json.dumps(training, indent=2)
