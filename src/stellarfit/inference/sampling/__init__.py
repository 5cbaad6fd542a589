"""NUTS sampling of a fit, module by module; :mod:`stellarfit.inference.nuts` gathers the public names."""
