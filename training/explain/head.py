"""Gradients without autograd: the classifier head's vector-Jacobian product as plain tensor ops.

onnxruntime has no backward pass, but every gradient CAM method only needs d logit[t] / d A, where
A is the last stage's map and everything after A is the classifier head (pooling, flatten,
dropout, linear, ReLU, Hardswish). `HeadVJP` runs that head forward, then walks it backwards:

1. g = fc.weight[t]                          (d logit_t / d embedding), for T targets per image
2. for each pre_logits module, last first:   g = VJP(module, its forward input, g)
   Linear: g @ W · ReLU: g * (x > 0) · Hardswish: g * its slope · Dropout/Identity: g · Flatten: reshape ·
   AdaptiveAvgPool2d: g spread evenly over each bin · AdaptiveMaxPool2d: g to each bin's argmax

Because the ops are traced like any other module, the same code runs in torch and becomes the
ONNX graph. A head holding any other module is refused: a wrong heatmap is worse than none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from striate.errors import StriateError

# The only modules a classifier head may hold (between the target layer and fc) to be explained.
SUPPORTED_HEAD_LAYERS = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Linear,
    nn.ReLU,
    nn.Hardswish,
    nn.Identity,
)


def head_steps(pre_logits: nn.Module, prefix: str = "head.pre_logits") -> list[tuple[str, nn.Module]]:
    """The head's modules in order (nested Sequentials flattened), or a StriateError naming the culprit."""
    if isinstance(pre_logits, nn.Sequential):
        steps: list[tuple[str, nn.Module]] = []
        for child_name, child in pre_logits.named_children():
            steps += head_steps(child, f"{prefix}.{child_name}")
        return steps
    if not isinstance(pre_logits, SUPPORTED_HEAD_LAYERS):
        allowed = ", ".join(cls.__name__ for cls in SUPPORTED_HEAD_LAYERS)
        raise StriateError(
            f"cannot write Grad-CAM for module {prefix!r} ({type(pre_logits).__name__}) in the classifier "
            f"head: only {allowed} are supported there"
        )
    if isinstance(pre_logits, nn.Flatten) and (pre_logits.start_dim, pre_logits.end_dim) != (1, -1):
        raise StriateError(f"cannot write Grad-CAM for {prefix!r}: only Flatten(1, -1) is supported")
    return [(prefix, pre_logits)]


def _pair(size: int | tuple[int | None, int | None] | None, full: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if size is None:
        return full
    return tuple(full[i] if s is None else int(s) for i, s in enumerate(size))  # type: ignore[return-value]


def _bins(length: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: [floor(i*L/out), ceil((i+1)*L/out))."""
    return [((i * length) // out, -((-(i + 1) * length) // out)) for i in range(out)]


def _pool_tables(hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant tables for adaptive pooling of an h x w map into out_hw bins.

    avg_t [J, h*w]: row j holds 1/|bin j| on the bin's cells (the avg-pool backward is g @ avg_t).
    index [J, K]: each bin's flat cell indices in row-major order, padded with the bin's first
    cell (a repeat never wins a first-occurrence argmax, so the argmax is torch's).
    """
    h, w = hw
    cells: list[list[int]] = []
    for y0, y1 in _bins(h, out_hw[0]):
        for x0, x1 in _bins(w, out_hw[1]):
            cells.append([y * w + x for y in range(y0, y1) for x in range(x0, x1)])
    avg_t = torch.zeros(len(cells), h * w, dtype=torch.float32)
    for j, idx in enumerate(cells):
        avg_t[j, idx] = 1.0 / len(idx)
    width = max(map(len, cells))
    index = torch.tensor([idx + [idx[0]] * (width - len(idx)) for idx in cells], dtype=torch.long)
    return avg_t, index


class _Step(nn.Module):
    """One head module: its forward (functional, never in place) and its vector-Jacobian product."""

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind = type(module).__name__
        self.in_shape = in_shape  # without the batch axis
        if isinstance(module, nn.Linear):
            self.weight, self.bias = module.weight, module.bias
        if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            _, h, w = in_shape
            self.out_hw = _pair(module.output_size, (h, w))
            avg_t, index = _pool_tables((h, w), self.out_hw)
            k = index.shape[1]
            # slot (j, k) -> one-hot of its cell: turns the per-bin argmax into a map-sized gradient.
            scatter = torch.zeros(index.numel(), h * w, dtype=torch.float32)
            scatter[torch.arange(index.numel()), index.reshape(-1)] = 1.0
            self.register_buffer("avg_t", avg_t, persistent=False)
            self.register_buffer("index", index, persistent=False)
            self.register_buffer("slots", torch.arange(k), persistent=False)
            self.register_buffer("scatter", scatter, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "Linear":
            return F.linear(x, self.weight, self.bias)
        if self.kind == "ReLU":
            return F.relu(x)
        if self.kind == "Hardswish":
            return F.hardswish(x)
        if self.kind == "Flatten":
            return x.flatten(1)
        if self.kind in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
            n, c = x.shape[:2]
            if self.kind == "AdaptiveAvgPool2d":
                pooled = x.flatten(2) @ self.avg_t.t()
            else:
                pooled = x.flatten(2)[:, :, self.index].amax(-1)
            # Bins from the tables: the ONNX exporter refuses sizes that do not divide the map.
            return pooled.reshape(n, c, *self.out_hw)
        return x  # Dropout (eval) and Identity

    def vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """d(output)/d(x) transposed, applied to g; x is this step's forward input."""
        if self.kind == "Linear":
            return g @ self.weight
        if self.kind == "ReLU":
            return g * (x > 0).to(g.dtype)
        if self.kind == "Hardswish":  # torch's hardswish_backward: 0 below -3, x/3 + 1/2 up to 3, then 1
            slope = torch.where(x < -3, torch.zeros_like(x), torch.where(x <= 3, x / 3 + 0.5, torch.ones_like(x)))
            return g * slope
        if self.kind == "Flatten":
            return g.reshape(x.shape)
        if self.kind == "AdaptiveAvgPool2d":
            return (g.flatten(2) @ self.avg_t).reshape(x.shape)
        if self.kind == "AdaptiveMaxPool2d":
            # Per bin, the first maximal cell (torch's choice) receives the bin's gradient.
            cells = x.flatten(2)[:, :, self.index]  # [N, C, J, K]
            winner = (cells.argmax(-1, keepdim=True) == self.slots).to(g.dtype)  # [N, C, J, K]
            spread = (winner * g.flatten(2).unsqueeze(-1)).flatten(2)  # [N, C, J*K]
            return (spread @ self.scatter).reshape(x.shape)
        return g


class HeadVJP(nn.Module):
    """(feature map A [N, C, h, w], targets [N, T]) -> (logits [N, K], chosen [N, T], grads [N, T, C, h, w]).

    A target t >= 0 is a class index; t = -k is the k-th most probable class (-1: the predicted one).
    `feature_shape` is A's (C, h, w), needed to build the pooling tables for a fixed input size.
    """

    def __init__(self, head: nn.Module, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        steps = head_steps(head.pre_logits)
        self.fc = head.fc
        if not isinstance(self.fc, nn.Linear):
            raise StriateError(f"cannot explain: head.fc is {type(self.fc).__name__}, not Linear")
        built = []
        shape: tuple[int, ...] = tuple(feature_shape)
        with torch.no_grad():
            x = torch.zeros(1, *shape)
            for _, module in steps:
                step = _Step(module, shape)
                built.append(step)
                x = step(x)
                shape = tuple(x.shape[1:])
        self.steps = nn.ModuleList(built)

    def embed(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The head's pre_logits forward: (embedding, each step's input)."""
        inputs = []
        x = features
        for step in self.steps:
            inputs.append(x)
            x = step(x)
        return x, inputs

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, inputs = self.embed(features)
        logits = F.linear(x, self.fc.weight, self.fc.bias)
        chosen = choose_targets(logits, targets)  # [N, T]
        n, t = chosen.shape
        g = self.fc.weight[chosen.reshape(-1)]  # [N*T, D]: d logit_t / d embedding
        for step, x_in in zip(reversed(self.steps), reversed(inputs), strict=True):
            # Every target of an image shares the image's forward values: repeat them T times.
            x_rep = x_in.unsqueeze(1).expand(n, t, *x_in.shape[1:]).reshape(n * t, *x_in.shape[1:])
            g = step.vjp(x_rep, g)
        return logits, chosen, g.reshape(n, t, *features.shape[1:])


def choose_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N, T] class indices: t >= 0 as given, t = -k the k-th most probable class of its image."""
    order = torch.argsort(logits, dim=1, descending=True)
    rank = torch.clamp(-targets - 1, min=0, max=logits.shape[1] - 1)
    return torch.where(targets < 0, torch.gather(order, 1, rank), targets)
