"""Bring your own model: export any PyTorch image classifier (torchvision, timm, your own module).

`export_classifier` (export.py) traces the module with its target layer's map as an extra output
and hands it to the importer; `specs` builds models from `torchvision:NAME`, `timm:NAME` or
`package.module:factory`; `weights` reads local weights files safely; `sources` finds labels and
preprocessing; `layers` finds the target layer; `check` holds the bundle to the module and to
pytorch-grad-cam; `from_spec` puts them together for `striate export SPEC`.
"""

from .export import export_classifier

__all__ = ["export_classifier"]
