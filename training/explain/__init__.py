"""Explanations on the torch side: the CAM base and gradient methods (cams.py), the classifier
head's hand-written backward that puts them in the exported graph (head.py), and the torch
references they are checked against (reference.py). The torch-free side is striate.explain."""
