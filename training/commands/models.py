"""`striate models`: the registered architectures and backbones, with their size at one setting.

Parameter counts are for a 1000-class model on 3x224x224 input with every other argument at its
default. Models are built on PyTorch's "meta" device (shapes only, no memory, no init), so the
whole table costs well under a second per model.
"""

from __future__ import annotations

import argparse
import json

import torch

from training.models import create_model, list_models, model_entry

COUNT_SETTINGS = {"num_classes": 1000, "in_chans": 3, "input_size": 224}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=["zoo", "backbone"], help="only this family")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def count_params(name: str) -> int | None:
    """Parameters at COUNT_SETTINGS, or None if the builder cannot be built that way."""
    try:
        with torch.device("meta"):
            model = create_model(name, **COUNT_SETTINGS)
    except Exception:  # a builder that needs real tensors or files: the table shows "?"
        return None
    return sum(p.numel() for p in model.parameters())


def rows(family: str | None = None) -> list[dict]:
    out = []
    for name in list_models(family=family):
        entry = model_entry(name)
        out.append({"name": name, "family": entry.family, "params": count_params(name), "summary": entry.summary})
    return out


def format_table(table: list[dict]) -> str:
    def params(n: int | None) -> str:
        return "?" if n is None else f"{n / 1e6:.2f}M"

    cells = [(r["name"], r["family"], params(r["params"]), r["summary"]) for r in table]
    header = ("name", "family", "params", "summary")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(3)]
    lines = []
    for c in [header, *cells]:
        lines.append(f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]}".rstrip())
    settings = ", ".join(f"{k}={v}" for k, v in COUNT_SETTINGS.items())
    lines.append(f"\nparams at {settings}, other arguments at their defaults.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    table = rows(args.family)
    if args.json:
        print(json.dumps({"settings": COUNT_SETTINGS, "models": table}, indent=2))
    else:
        print(format_table(table))
    return 0
