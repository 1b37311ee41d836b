"""correspond.mail.merge: merge fields rendered in a sandbox, as tables."""

from __future__ import annotations

import pytest

from correspond.mail.merge import (
    FIELDS,
    MissingMergeFields,
    TemplateError,
    check_template,
    fields_used,
    merge_values,
    render_part,
    render_template,
)

VALUES = merge_values(
    contact_name="Ann Marie Lee",
    contact_email="ann@example.org",
    company_name="Acme & Sons",
    deal_name="Q1 <renewal>",
    user_name="Me",
    signature="Me\nAcme <sales>",
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {{contact.first_name}}", "Hi Ann"),
        ("Hi {{ contact.first_name }}!", "Hi Ann!"),
        ("{{contact.last_name}}, {{contact.email}}", "Marie Lee, ann@example.org"),
        ("{{company.name}} / {{deal.name}}", "Acme & Sons / Q1 <renewal>"),
        ("{{user.signature}}", "Me\nAcme <sales>"),
        ('{{deal.status | "open"}}', "open"),
        ('{{contact.first_name|"there"}}', "Ann"),
        ("no fields {at} all { {x} }", "no fields {at} all { {x} }"),
    ],
)
def test_text_rendering(template: str, expected: str) -> None:
    assert render_part(template, VALUES) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("<p>{{company.name}}</p>", "<p>Acme &amp; Sons</p>"),
        ("<b>{{deal.name}}</b>", "<b>Q1 &lt;renewal&gt;</b>"),
        ("{{user.signature}}", "Me<br>\nAcme &lt;sales&gt;"),
        ('<a title="{{company.name}}">', '<a title="Acme &amp; Sons">'),
    ],
)
def test_values_are_escaped_in_html(template: str, expected: str) -> None:
    assert render_part(template, VALUES, as_html=True) == expected


@pytest.mark.parametrize(
    "template",
    [
        "{{contact.__class__}}",
        "{{contact.first_name.__class__}}",
        "{{ contact }}",
        "{{ contact['first_name'] }}",
        "{{ contact.first_name() }}",
        "{{ config.secret_key }}",
        "{{ user.password }}",
        "{% for x in y %}",  # not a field: left as text
        "{{ 7*7 }}",
        "{{",
        "{{contact.first_name | upper}}",
    ],
)
def test_anything_but_a_documented_field_is_refused(template: str) -> None:
    if "{{" not in template:
        assert render_part(template, VALUES) == template
        return
    with pytest.raises(TemplateError) as caught:
        check_template(text=template)
    assert str(caught.value).startswith("text: ")


def test_a_missing_field_is_an_error_naming_every_one() -> None:
    empty = merge_values(contact_name="", user_name="Me")
    with pytest.raises(MissingMergeFields) as caught:
        render_template(
            "Hi {{contact.first_name}}",
            "{{deal.name}} {{contact.first_name}}",
            "<p>{{company.name}}</p>",
            empty,
        )
    assert caught.value.fields == ["contact.first_name", "deal.name", "company.name"]
    assert "{{contact.first_name}}, {{deal.name}}, {{company.name}}" in str(caught.value)
    # A fallback is used instead of the error; a blank value is missing, not empty.
    assert render_part('Hi {{contact.first_name | "there"}}', empty) == "Hi there"
    with pytest.raises(MissingMergeFields):
        render_part("{{contact.name}}", {"contact.name": "   "})


def test_fields_used_and_bounds() -> None:
    assert fields_used("{{deal.name}} {{user.name}} {{deal.name}}") == ["deal.name", "user.name"]
    assert set(FIELDS) >= {
        "contact.first_name", "contact.last_name", "contact.email", "company.name",
        "deal.name", "user.name", "user.signature",
    }  # fmt: skip
    with pytest.raises(TemplateError, match="longer than"):
        fields_used("x" * 1_000_001)
    with pytest.raises(TemplateError, match="more than 1000"):
        fields_used("{{user.name}}" * 1001)


def test_a_value_is_never_rendered_again() -> None:
    """A value that looks like a field stays text: rendering is one pass."""
    values = merge_values(contact_name="{{user.email}}", user_email="me@example.com")
    assert render_part("{{contact.name}}", values) == "{{user.email}}"
