"""Explainability: class activation maps of the networks (cam.py) and the scoring CLI (__main__.py)."""
