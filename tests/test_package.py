import stellarfit


def test_public_names_resolve():
    for name in stellarfit.__all__:
        assert getattr(stellarfit, name) is not None, name


def test_unknown_attribute_is_an_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stellarfit.nope  # noqa: B018
