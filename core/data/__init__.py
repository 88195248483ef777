"""Datasets: discovery of folder layouts, decoding, splits, hand-crafted features and slice stacks."""
