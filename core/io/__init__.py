"""Files: atomic writes, scan decoding and the run-folder store. Builds no model."""
