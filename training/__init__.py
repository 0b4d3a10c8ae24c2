"""Striate training side: blocks, architectures, data, training, export, analysis (needs torch)."""
