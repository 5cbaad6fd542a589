import stellarfit


def test_public_names_resolve():
    for name in stellarfit.__all__:
        assert getattr(stellarfit, name) is not None, name


def test_unknown_attribute_is_an_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stellarfit.nope  # noqa: B018


def test_fit_batch_is_fit_stars():
    """The design's API sketch calls the batch entry point sf.fit_batch(spectra, emulator)."""
    assert stellarfit.fit_batch is stellarfit.fit_stars
    assert "fit_batch" in stellarfit.__all__
