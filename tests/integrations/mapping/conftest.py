"""Fixtures for the mapping tests: vendor-shaped payloads (taken from the sandbox, which follows
the vendor specs) and the default mappings compiled without a database."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integrations.mapping.apply import CompiledMapping, compile_mapping
from integrations.mapping.transforms import ValueMapTable
from integrations.vendors import VENDORS
from integrations.vendors.spec import MappingDefault

FIXTURES = Path(__file__).parent / "fixtures"


def load_payload(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def default_tables() -> dict[str, ValueMapTable]:
    return {
        vm.name: ValueMapTable.build(vm.name, vm.entries, vm.default)
        for entry in VENDORS.values()
        for vm in entry.value_maps
    }


def default_spec(vendor: str, object_type: str) -> MappingDefault:
    return next(m for m in VENDORS[vendor].mappings if m.object_type == object_type)


def compiled_default(vendor: str, object_type: str) -> CompiledMapping:
    spec = default_spec(vendor, object_type)
    return compile_mapping(
        object_type=spec.object_type,
        canonical_model=spec.canonical_model,
        external_id_path=spec.external_id_path,
        version_path=spec.version_path,
        fields=spec.fields,
        value_maps=default_tables(),
    )


@pytest.fixture
def payload() -> Callable[[str], dict[str, Any]]:
    """A fresh copy of a fixture payload per call (tests may change it)."""
    return lambda name: copy.deepcopy(load_payload(name))


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    # The compiled-mapping cache lives in the process; tests must not see each other's.
    from integrations.mapping.selectors import mapping_cache_clear

    mapping_cache_clear()
    yield
    mapping_cache_clear()
