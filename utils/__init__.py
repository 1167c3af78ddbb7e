"""Shared plumbing for the three entry scripts: config, errors, atomic I/O, provenance, distributed."""
