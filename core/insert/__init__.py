"""Lesion insertion: hemorrhages painted into real normal slices (anatomy read from the slice, one shape per
subtype), written as a dataset in which a normal and its painted copies differ only by the bleed."""
