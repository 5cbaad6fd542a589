"""Shipped data files (see the .md note beside each for provenance and licence)."""
