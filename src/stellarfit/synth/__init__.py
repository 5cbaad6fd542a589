"""Spectral synthesis: atmospheres, line list, abundances and the grid engines."""
