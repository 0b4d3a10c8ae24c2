"""Normalisation constants, stated once; plain tuples, so training and the service can import them.

A bundle's manifest carries the mean/std it was evaluated with; these are the values training
chooses when it does not compute them from the data.
"""

from __future__ import annotations

# ImageNet's RGB channel statistics (torchvision's and timm's IMAGENET_DEFAULT_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Their mean over the channels, rounded: the usual stand-in for grayscale input.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
# Inputs scaled to [-1, 1], as TensorFlow-trained weights expect (EfficientNet-Lite, Inception).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
