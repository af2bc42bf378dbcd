"""Validate simulator XML against OpenNebula's XSDs (namespace injected, as the XSD README says)."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

XSD_DIR = Path(__file__).resolve().parent / "xsd"
NS = "http://opennebula.org/XMLSchema"


@functools.cache
def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_DIR / name)))


def validate(xml: str, xsd: str, root: str) -> etree._Element:
    """Assert `xml` is oned-style (no declaration, no namespace, root `root`) and valid against `xsd`."""
    assert isinstance(xml, str) and xml.startswith(f"<{root}"), xml[:80]
    assert "xmlns" not in xml.split(">", 1)[0]
    doc = etree.fromstring(xml.encode("utf-8"))
    assert doc.tag == root
    namespaced = xml.replace(f"<{root}", f'<{root} xmlns="{NS}"', 1)
    tree = etree.fromstring(namespaced.encode("utf-8"))
    checker = schema(xsd)
    if not checker.validate(tree):
        raise AssertionError(f"{root} not valid against {xsd}: {checker.error_log}")
    return doc
