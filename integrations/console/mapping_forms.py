"""The mapping editor's forms (integrations/console/mappings.py): what an admin types, parsed and
checked for shape here; whether it makes sense for the mapping is the services' to say
(integrations/mapping/versions.py, review.py), and their words come back onto the form."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict

from integrations.mapping.review import SAMPLES_DEFAULT, SAMPLES_MAX
from integrations.models import FieldMapping
from integrations.vendors.spec import FieldSpec

# A CSV of a value map: the largest shipped map has ~40 rows; 1 MB is tens of thousands.
CSV_MAX_BYTES = 1_000_000


class FieldRowForm(forms.Form):
    """One row of a draft: canonical field <- vendor path, direction, transform, options."""

    canonical_field = forms.CharField(
        max_length=64, help_text="e.g. status, customer__external_id, lines[].quantity"
    )
    vendor_path = forms.CharField(
        max_length=500, help_text="Dotted path in the vendor's payload, e.g. client.id"
    )
    direction = forms.ChoiceField(choices=FieldMapping.Direction.choices)
    transform = forms.ChoiceField(choices=FieldMapping.Transform.choices)
    value_map = forms.CharField(
        max_length=64, required=False, help_text="For a value-map lookup: the map's name."
    )
    options = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text='Other options as JSON, e.g. {"places": 2} or {"default": ""}',
    )
    required = forms.BooleanField(required=False)
    confirm = forms.BooleanField(
        required=False,
        label="Save anyway",
        help_text="The recent payloads put this row in doubt (above); save it all the same.",
    )

    def clean_options(self) -> dict[str, Any]:
        text = self.cleaned_data.get("options", "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Not JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(value, dict):
            raise ValidationError('Options are a JSON object: {"name": value, ...}')
        return value

    def spec(self) -> FieldSpec:
        data = self.cleaned_data
        options = dict(data["options"])
        if data.get("value_map"):
            options["value_map"] = data["value_map"].strip()
        elif data["transform"] != FieldMapping.Transform.VALUE_MAP:
            options.pop("value_map", None)
        return FieldSpec(
            canonical_field=data["canonical_field"].strip(),
            vendor_path=data["vendor_path"].strip(),
            direction=data["direction"],
            transform=data["transform"],
            options=options,
            required=bool(data.get("required")),
        )

    @classmethod
    def initial_of(cls, spec: FieldSpec) -> dict[str, Any]:
        options = dict(spec.options)
        value_map = options.pop("value_map", "")
        return {
            "canonical_field": spec.canonical_field,
            "vendor_path": spec.vendor_path,
            "direction": spec.direction,
            "transform": spec.transform,
            "value_map": value_map,
            "options": json.dumps(options, sort_keys=True) if options else "",
            "required": spec.required,
        }


class DraftSettingsForm(forms.Form):
    external_id_path = forms.CharField(max_length=200, label="Vendor id path")
    version_path = forms.CharField(
        max_length=200,
        required=False,
        label="Modification stamp path",
        help_text="Where the vendor says when the record last changed (orders updates).",
    )
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class EntryForm(forms.Form):
    """One value-map entry: the value looked up and the value it gives."""

    vendor_value = forms.CharField(max_length=200, label="Looked up")
    canonical_value = forms.CharField(max_length=200, label="Gives")
    was = forms.CharField(max_length=200, required=False, widget=forms.HiddenInput)


class EntryDeleteForm(forms.Form):
    vendor_value = forms.CharField(max_length=200)


class DefaultForm(forms.Form):
    default = forms.CharField(
        max_length=200,
        required=False,
        help_text="For a value without an entry; blank: such a value opens a mapping case.",
    )


class NewValueMapForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="Letters, digits and underscores.")
    description = forms.CharField(max_length=200, required=False)


class CsvImportForm(forms.Form):
    file = forms.FileField(help_text="vendor_value,canonical_value, as the export writes it.")
    replace = forms.BooleanField(
        required=False,
        label="Replace all entries",
        help_text="Entries the file does not hold are removed (otherwise they are kept).",
    )

    def clean_file(self) -> str:
        upload = self.cleaned_data["file"]
        if upload.size > CSV_MAX_BYTES:
            raise ValidationError(f"At most {CSV_MAX_BYTES // 1000:,} kB.")
        try:
            return str(upload.read().decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise ValidationError("The file is not UTF-8 text.") from None


class PreviewForm(forms.Form):
    last = forms.IntegerField(
        min_value=1,
        max_value=SAMPLES_MAX,
        initial=SAMPLES_DEFAULT,
        required=False,
        label="Latest payloads",
    )


class RejectForm(forms.Form):
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 2}))


class FourEyesForm(forms.Form):
    mapping_four_eyes = forms.BooleanField(
        required=False,
        label="Four eyes",
        help_text="A mapping published by one admin applies only once another admin approves it.",
    )


class RetryFixedForm(forms.Form):
    """The cases the page showed as fixed, each with the revision seen: "case" repeated, and
    "revision-<id>" for each."""

    def __init__(self, data: QueryDict) -> None:
        super().__init__(data)
        self.posted = data
        self.revisions: dict[int, int] = {}

    def clean(self) -> dict[str, Any]:
        ids = self.posted.getlist("case")
        for raw in ids:
            try:
                case_id = int(raw)
                self.revisions[case_id] = int(self.posted.get(f"revision-{case_id}", ""))
            except ValueError:
                raise ValidationError("Reload the page: its list of cases is unreadable.") from None
        if not self.revisions:
            raise ValidationError("Tick the cases to retry.")
        return {}
