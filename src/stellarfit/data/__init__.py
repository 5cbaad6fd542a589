"""Shipped data files (see the .md note beside each for provenance and licence)."""

from importlib import resources as _resources

#: shipped example spectra by name
EXAMPLES = {"example": "example_star.fits"}


def example_path(name: str = "example") -> str:
    """Path of a shipped example spectrum (see ``data/examples/*.md`` for what each is)."""
    if name not in EXAMPLES:
        raise KeyError(f"no shipped example {name!r}; examples: {sorted(EXAMPLES)}")
    return str(_resources.files("stellarfit") / "data" / "examples" / EXAMPLES[name])


def example_truth(name: str = "example") -> dict[str, float]:
    """The true labels, rv and vsini of a shipped example spectrum (its TRUTH table)."""
    from astropy.io import fits

    with fits.open(example_path(name)) as hdul:
        table = hdul["TRUTH"].data
        return {str(p).strip(): float(v) for p, v in zip(table["PARAMETER"], table["VALUE"])}
