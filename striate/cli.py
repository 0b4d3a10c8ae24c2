"""The `striate` command: one entry point, one module per subcommand.

Subcommand modules are imported only when chosen, so `striate serve` never imports torch and
`striate --help` is instant. Each module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from striate import __version__
from striate.errors import StriateError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("training.commands.models", "list the registered architectures and backbones"),
    "train": ("training.commands.train", "train an architecture on a dataset"),
    "evaluate": ("training.commands.evaluate", "evaluate a checkpoint: accuracy, per-class P/R, confusion"),
    "finetune": ("training.commands.finetune", "fine-tune or linear-probe a pretrained backbone"),
    "features": ("training.commands.features", "write the embeddings of a folder of images to .npy/.parquet"),
    "export": ("training.commands.export", "export a checkpoint to an ONNX bundle in exported/"),
    "import": ("training.commands.import_", "import an ONNX classifier (any origin) as a bundle, with explanations"),
    "analyze": ("training.commands.analyze", "separability, neuron specialization, activations, gallery"),
    "serve": ("service.commands.serve", "serve the model repository over HTTP"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: striate <command> [options]   (striate {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `striate <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"striate: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = "service" if module_name.startswith("service") else "training"
        print(
            f"striate: error: `striate {name}` needs the '{extra}' extra (pip install 'striate[{extra}]'): {exc}",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"striate {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except StriateError as exc:
        print(f"striate {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"striate {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
