"""Synthetic head CT phantoms in Hounsfield units, and the dataset writer (`python -m core.phantom`)."""
