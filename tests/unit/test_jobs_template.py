"""Placeholders in job specs."""
from __future__ import annotations

import datetime as dt

import pytest

from hovcaffe.jobs.template import TemplateError, nested_lookup, placeholders, render

CTX = {"date": dt.date(2024, 5, 1), "job": "j", "steps": {"train": {"outputs": {"model": "/m"}}}}


def test_render_names_dates_and_escapes():
    lookup = nested_lookup(CTX)
    assert render("{job}/{date}/x", lookup) == "j/2024-05-01/x"
    assert render("{date:%Y/%m/%d}-{date:%Y%m%d}", lookup) == "2024/05/01-20240501"
    assert render("{steps.train.outputs.model}", lookup) == "/m"
    assert render("{{literal}} {job}", lookup) == "{literal} j"


def test_errors():
    lookup = nested_lookup(CTX)
    with pytest.raises(TemplateError, match=r"unknown placeholder \{nope\}"):
        render("{nope}", lookup)
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render("{steps.train}", lookup)  # a prefix, not a value
    with pytest.raises(TemplateError, match="only dates take a format"):
        render("{job:%Y}", lookup)
    with pytest.raises(TemplateError, match="unbalanced '}'"):
        render("a}b", lookup)


def test_placeholders_lists_names_and_formats():
    assert list(placeholders("{a.b}-{date:%Y}-{{x}}")) == [("a.b", None), ("date", "%Y")]
