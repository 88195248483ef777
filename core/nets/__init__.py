"""Networks: the registry's CNNs and sequence models, built, loaded, measured and run."""
