"""Seeing inside a CNN: training report, class separability per layer, neuron specialization,
activation maps and an explanation gallery (Grad-CAM, occlusion) with a faithfulness score.

Submodules are imported on demand so that `write_report` stays light for the training loop.
"""
