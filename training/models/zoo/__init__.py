"""The classic architecture zoo, built from `training.blocks`. Importing registers every builder."""

from . import alexnet, googlenet, lenet, resnet, senet, vgg, xception

__all__ = ["alexnet", "googlenet", "lenet", "resnet", "senet", "vgg", "xception"]
