"""The callback route's parsing shortcuts give what the plain way gives: parameters not decoded when nothing in
them is encoded, and the IPv4 pattern checked before ipaddress."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, unquote_plus

import falcon
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.callbacks import _IPV4, _pairs

_octet = st.integers(0, 300).map(str) | st.sampled_from(["00", "01", "007", "1e1", "", " 1", "١"])


@given(st.lists(_octet, min_size=3, max_size=5).map(".".join) | st.text(alphabet="0123456789.:abcdef", max_size=20))
def test_every_address_the_ipv4_pattern_takes_ipaddress_takes(text: str) -> None:
    if _IPV4.fullmatch(text):
        assert str(ipaddress.ip_address(text)) == text


@given(st.lists(st.integers(0, 255), min_size=4, max_size=4).map(lambda xs: ".".join(map(str, xs))))
def test_the_ipv4_pattern_takes_every_dotted_quad(text: str) -> None:
    assert _IPV4.fullmatch(text)


def _reference(text: str, query: bool) -> dict[str, str] | str:
    """_pairs as it was: every key and value decoded."""
    decode = unquote_plus if query else unquote
    params: dict[str, str] = {}
    for piece in text.split("&"):
        if piece:
            key, sep, value = piece.partition("=")
            key, value = decode(key), decode(value)
            if not sep or (key in params and params[key] != value):
                return "400"
            params[key] = value
    return params


@given(st.text(alphabet="ab=&%+2041 _.-", max_size=30), st.booleans())
def test_pairs_decodes_as_decoding_everything_would(text: str, query: bool) -> None:
    params: dict[str, str] = {}
    try:
        _pairs(text, params, query)
    except falcon.HTTPBadRequest:
        assert _reference(text, query) == "400"
    else:
        assert params == _reference(text, query)


@pytest.mark.parametrize("text", ["a=b+c", "a=b%20c", "a%3D=b"])
def test_pairs_decodes_what_is_encoded(text: str) -> None:
    params: dict[str, str] = {}
    _pairs(text, params, query=True)
    assert params == _reference(text, True)
