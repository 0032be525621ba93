"""Experiments that ship inside the package (the demo and sweeps read them from an installed wheel); the
repository's top-level configs/ point at them."""
