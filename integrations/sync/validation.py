"""The checks Django's ``full_clean`` makes on a canonical record, compiled once per model and
set of written fields, and run on plain ``{attname: value}`` rows.

Every write of a canonical record (a polled page, a webhook, a person's edit) runs these, so a
value is refused the same way whichever door it came in by, with Django's own wording keyed by
field name (``{"region": ["This field cannot be blank."]}``). ``full_clean`` itself costs about
40 microseconds a record (it builds an instance and walks every field and its validators); a
polled page of 2,000 time entries would spend 80 ms in it. Here each written field is one
small closure: a type test, the choices/null/blank rules, a length test, and the field's
validators (currency code, e-mail, decimal digits and places, integer range). Django's
validators only run again to word a failure, so the wording is always Django's.

What is checked, as ``full_clean`` would:
- per field (``Field.clean``): conversion to the field's type, choices, null, blank,
  ``max_length``, decimal digits and places, every validator; a blank-allowed field left empty
  is skipped altogether, as Django skips it;
- on a new record, the fields not written too, with their defaults (computed once per model);
- the model's own ``clean()``, when a record model defines one.

What the database enforces instead, worded by ``integrity_errors`` as ``full_clean`` would word
it: unique fields and constraints (they need a query per row to check ahead), check
constraints (an expression over the row: the database evaluates them on insert anyway), and
foreign keys (every relation id written was looked up first).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import MaxLengthValidator
from django.db import IntegrityError, models

ErrorDict = dict[str, list[str]]

# Sync bookkeeping: set by the write path itself, never by the data being written.
BOOKKEEPING = frozenset({"source_system", "source_version", "field_sources"})

# Python types a field takes as they are; any other value goes through Field.to_python.
_STR = frozenset({str})
_TYPES: dict[str, frozenset[type]] = {
    "CharField": _STR,
    "TextField": _STR,
    "EmailField": _STR,
    "URLField": _STR,
    "SlugField": _STR,
    "DecimalField": frozenset({Decimal}),
    "IntegerField": frozenset({int}),
    "BigIntegerField": frozenset({int}),
    "SmallIntegerField": frozenset({int}),
    "PositiveIntegerField": frozenset({int}),
    "PositiveSmallIntegerField": frozenset({int}),
    "PositiveBigIntegerField": frozenset({int}),
    "BooleanField": frozenset({bool}),
    "AutoField": frozenset({int}),
    "BigAutoField": frozenset({int}),
    "DateField": frozenset({date}),
    "DateTimeField": frozenset({datetime}),
}
_EMPTIABLE = frozenset({str, list, tuple, dict})

FieldCheck = Callable[[Any], Any]


def _is_empty(value: Any) -> bool:
    """``value in Field.empty_values`` (None, "", [], (), {}) without five comparisons."""
    return value is None or (value.__class__ in _EMPTIABLE and not value)


def _field_check(field: models.Field[Any, Any]) -> FieldCheck:
    """``field.clean(value)`` for one field: returns the value converted to the field's type,
    raises Django's ValidationError."""
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    fast_types = _TYPES.get(target.get_internal_type())
    choices = frozenset(key for key, _ in field.flatchoices) if field.choices is not None else None
    editable, null, blank = field.editable, field.null, field.blank
    max_length = field.max_length if fast_types is _STR else None
    # MaxLengthValidator is the length test above; the others run on every non-empty value.
    validators = [v for v in field.validators if not isinstance(v, MaxLengthValidator)]
    messages = field.error_messages

    def check(value: Any) -> Any:
        if blank and _is_empty(value):
            return value  # full_clean skips a blank-allowed field left empty
        if value is not None and fast_types is not None and value.__class__ not in fast_types:
            value = field.to_python(value)
        empty = _is_empty(value)
        if editable:
            if choices is not None and not empty and not _in(value, choices):
                raise ValidationError(
                    messages["invalid_choice"], code="invalid_choice", params={"value": value}
                )
            if value is None and not null:
                raise ValidationError(messages["null"], code="null")
            if not blank and empty:
                raise ValidationError(messages["blank"], code="blank")
        if empty:
            return value  # run_validators skips empty values
        if max_length is not None and len(value) > max_length:
            field.run_validators(value)
        if validators:
            try:
                for validator in validators:
                    validator(value)
            except ValidationError:
                field.run_validators(value)  # every failure, worded as Django words it
        return value

    return _fast_path(check, fast_types, choices, max_length, validators, blank, editable)


def _fast_path(
    check: FieldCheck,
    fast_types: frozenset[type] | None,
    choices: frozenset[Any] | None,
    max_length: int | None,
    validators: list[Any],
    blank: bool,
    editable: bool,
) -> FieldCheck:
    """`check`, behind a test that passes a value of the field's own type that is plainly
    valid without the full sequence: a polled page's values almost always are (8 fields of
    20,000 time entries: the full sequence for each cost 0.1 s of a 2 s poll). Anything else
    (None, empty, another type, a length, choice or validator failure) takes `check`, which
    words the error."""
    if fast_types is None or len(fast_types) != 1 or not editable:
        return check
    (kind,) = fast_types
    run = tuple(validators)
    if kind is str:
        limit = max_length if max_length is not None else float("inf")

        def fast_text(value: Any) -> Any:
            if value.__class__ is str and value:
                if len(value) <= limit and (choices is None or value in choices):
                    try:
                        for validator in run:
                            validator(value)
                    except ValidationError:
                        return check(value)
                    return value
            elif blank and value == "":
                return value
            return check(value)

        return fast_text

    # Values of these types are never empty (0, False and a date are values).
    def fast_typed(value: Any) -> Any:
        if value.__class__ is kind and (choices is None or value in choices):
            try:
                for validator in run:
                    validator(value)
            except ValidationError:
                return check(value)
            return value
        return check(value)

    return fast_typed


def _in(value: Any, choices: frozenset[Any]) -> bool:
    try:
        return value in choices
    except TypeError:  # an unhashable value is no choice
        return False


class RowChecks:
    """``full_clean``'s field checks for rows of one model that write the same fields."""

    def __init__(self, model: type[models.Model], names: tuple[str, ...], creating: bool):
        fields = _checked_fields(model)
        self.steps = [
            (attname, fields[attname].name, _field_check(fields[attname]))
            for attname in names
            if attname in fields
        ]
        # A new record's unwritten fields hold their defaults: the same for every row, so
        # checked once, here.
        self.defaults_errors: ErrorDict = {}
        if creating:
            for attname, field in fields.items():
                if attname in names or field.has_db_default():
                    continue
                try:
                    _field_check(field)(field.get_default())
                except ValidationError as exc:
                    self.defaults_errors[field.name] = exc.messages

    def __call__(self, row: dict[str, Any]) -> ErrorDict | None:
        """The row's errors by field name, or None. Converted values replace the row's."""
        errors = None
        for attname, name, check in self.steps:
            value = row[attname]
            try:
                cleaned = check(value)
            except ValidationError as exc:
                if errors is None:
                    errors = {}
                errors[name] = exc.messages
                continue
            if cleaned is not value:
                row[attname] = cleaned
        if self.defaults_errors:
            return {**self.defaults_errors, **(errors or {})}
        return errors


_CHECKED: dict[type[models.Model], dict[str, models.Field[Any, Any]]] = {}
_COMPILED: dict[tuple[type[models.Model], tuple[str, ...], bool], RowChecks] = {}


def _checked_fields(model: type[models.Model]) -> dict[str, models.Field[Any, Any]]:
    """attname -> field, for the fields data may set (not the id, timestamps, bookkeeping)."""
    fields = _CHECKED.get(model)
    if fields is None:
        fields = _CHECKED[model] = {
            f.attname: f
            for f in model._meta.concrete_fields
            if not f.primary_key
            and not f.generated
            and f.name not in BOOKKEEPING
            and not getattr(f, "auto_now", False)
            and not getattr(f, "auto_now_add", False)
        }
    return fields


def row_checks(model: type[models.Model], names: tuple[str, ...], *, creating: bool) -> RowChecks:
    """The compiled checks for rows of `model` writing the attnames `names` (kept: a page
    compiles them once, later pages reuse them)."""
    key = (model, names, creating)
    checks = _COMPILED.get(key)
    if checks is None:
        checks = _COMPILED[key] = RowChecks(model, names, creating)
    return checks


def has_own_clean(model: type[models.Model]) -> bool:
    return model.clean is not models.Model.clean


def clean_errors(instance: models.Model) -> ErrorDict | None:
    """The model's own ``clean()`` (cross-field rules), as full_clean reports it."""
    try:
        instance.clean()
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            return dict(exc.message_dict)
        return {NON_FIELD_ERRORS: exc.messages}
    return None


def describe(errors: Mapping[str, list[str]]) -> str:
    """``region: This field cannot be blank.`` (fields in order; a record-wide error bare)."""
    parts = []
    for name, messages in errors.items():
        for message in messages:
            parts.append(message if name == NON_FIELD_ERRORS else f"{name}: {message}")
    return "; ".join(parts)


# -- what the database refused, worded as full_clean words it ------------------------------------

_PG_KEY = re.compile(r"Key \((?P<columns>.+?)\)=")
_SQLITE = re.compile(
    r"^(?P<kind>UNIQUE|CHECK|NOT NULL) constraint failed: (?P<what>.+)$", re.IGNORECASE
)


def integrity_errors(model: type[models.Model], exc: IntegrityError) -> ErrorDict:
    """The refusal of one row of `model` by the database, keyed and worded as full_clean's
    ``validate_unique``/``validate_constraints`` would have put it."""
    kind, constraint, columns = _refusal(exc)
    meta = model._meta
    by_column = {f.column: f for f in meta.concrete_fields}
    if kind == "check":
        for check in meta.constraints:
            if check.name == constraint:
                return {NON_FIELD_ERRORS: [str(check.get_violation_error_message())]}
    if kind == "not_null" and columns and columns[0] in by_column:
        field = by_column[columns[0]]
        return {field.name: [str(field.error_messages["null"])]}
    if kind == "unique":
        names = tuple(by_column[c].name for c in columns if c in by_column)
        for unique in meta.constraints:
            if isinstance(unique, models.UniqueConstraint) and (
                unique.name == constraint or (names and tuple(unique.fields) == names)
            ):
                if unique.condition is None and unique.fields:
                    return _unique_error(model, tuple(unique.fields))
                return {NON_FIELD_ERRORS: [str(unique.get_violation_error_message())]}
        if names:  # a unique field, or unique_together
            return _unique_error(model, names)
    return {NON_FIELD_ERRORS: [str(exc).strip().splitlines()[0]]}


def _unique_error(model: type[models.Model], names: tuple[str, ...]) -> ErrorDict:
    message = model().unique_error_message(model, names)
    return {names[0] if len(names) == 1 else NON_FIELD_ERRORS: message.messages}


def _refusal(exc: IntegrityError) -> tuple[str, str, list[str]]:
    """(unique | check | not_null | "", constraint name, column names) of a refusal."""
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    if diag is not None:  # PostgreSQL (psycopg): the error names what refused the row
        kind = {"23505": "unique", "23514": "check", "23502": "not_null"}.get(
            getattr(cause, "sqlstate", "") or "", ""
        )
        columns: list[str] = []
        if kind == "unique":
            found = _PG_KEY.search(diag.message_detail or "")
            if found:
                columns = [c.strip().strip('"') for c in found.group("columns").split(",")]
        elif kind == "not_null" and diag.column_name:
            columns = [diag.column_name]
        return kind, diag.constraint_name or "", columns
    found = _SQLITE.match(str(exc))
    if found is None:
        return "", "", []
    kind = found.group("kind").lower().replace(" ", "_")
    what = found.group("what")
    if kind == "check":
        return kind, what, []
    return kind, "", [part.strip().rpartition(".")[2] for part in what.split(",")]
