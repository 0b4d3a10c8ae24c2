"""Size and compute of every zoo architecture, at the paper setting and at the digits setting.

Prints a Markdown table: parameters and forward GFLOPs (counted by torch.utils.flop_counter, so
the figures are exact and machine-independent) for 3x224x224 / 1000 classes at paper widths, and
for 1x32x32 / 10 classes at a quarter of the paper width (LeNet-5 at full width), plus that
build's fp32 size.

    .venv/bin/python bench/zoo_params.py [--digits-scale 0.25]
"""

from __future__ import annotations

import argparse
import inspect

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.models import create_model, list_models, model_entry

PAPER_HEAD = {"alexnet", "vgg11", "vgg16"}  # built with head="paper" at 224 px to match the papers


def measure(name: str, **kwargs) -> tuple[int, float, float]:
    """(parameters, forward GFLOPs for one image, fp32 state-dict MB)."""
    model = create_model(name, **kwargs).eval()
    size = kwargs["input_size"]
    x = torch.zeros(1, kwargs["in_chans"], size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    params = sum(p.numel() for p in model.parameters())
    mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    return params, counter.get_total_flops() / 1e9, mb


def paper_width(name: str) -> int:
    return inspect.signature(model_entry(name).builder).parameters["base_width"].default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-scale", type=float, default=0.25, help="width of the digits builds / paper width")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"| model | params 224 px, 1000 cls | GFLOPs 224 px | digits base_width (x{args.digits_scale:g}) "
        "| params digits | GFLOPs digits | MB digits |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in list_models(family="zoo"):
        head = {"head": "paper"} if name in PAPER_HEAD else {}
        p224, f224, _ = measure(name, num_classes=1000, in_chans=3, input_size=224, **head)
        scale = 1.0 if name == "lenet5" else args.digits_scale
        width = max(1, round(paper_width(name) * scale))
        p32, f32, mb = measure(name, num_classes=10, in_chans=1, input_size=32, base_width=width)
        print(f"| {name} | {p224 / 1e6:.2f}M | {f224:.2f} | {width} | {p32 / 1e3:.0f}k | {f32:.3f} | {mb:.2f} |")
    print("\nFLOPs count a multiply-add as 2. Paper head (flattened 6x6 / 7x7 map) for alexnet/vgg at 224 px.")


if __name__ == "__main__":
    main()
