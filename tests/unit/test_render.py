"""The dashboard's HTML renderer escapes every value it did not build itself."""

from __future__ import annotations

import pytest

from hub.api.render import Markup, asset, escape, join, render, tag


def test_values_are_escaped_and_markup_is_not() -> None:
    hostile = '<script>alert("x")</script>&\''
    page = render("error.html", status=404, message=hostile, css=asset("dashboard.css"))
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;" in page
    cell = tag("td", hostile, class_='a"b', data_id="<x>")
    assert cell == ('<td class="a&quot;b" data-id="&lt;x&gt;">&lt;script&gt;alert(&quot;x&quot;)'
                    "&lt;/script&gt;&amp;&#x27;</td>")
    assert join([cell, Markup("<br>"), "<i>"]) == cell + "<br>&lt;i&gt;"
    assert escape(None) == "" and tag("option", "a", selected=None) == "<option>a</option>"


def test_a_missing_value_is_an_error_not_an_empty_hole() -> None:
    with pytest.raises(KeyError):
        render("error.html", status=404)


def test_static_urls_carry_the_content_hash() -> None:
    url = asset("chart.umd.min.js")
    assert url.startswith("/dashboard/static/chart.umd.min.js?v=") and len(url.split("=")[1]) == 12
