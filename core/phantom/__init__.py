"""Synthetic head CT phantoms: anatomy and bleeds in Hounsfield units, and the dataset writer
(`python -m core.phantom`)."""
