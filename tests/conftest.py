from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory


@pytest.fixture
def api_client_as(db: None) -> Callable[..., APIClient]:
    """`api_client_as(role, **user_fields)`: an API client signed in as a new user holding
    `role` ("" for no role); `user_fields` go to UserFactory (e.g. a known username)."""

    def make(role: str, **user_fields: Any) -> APIClient:
        client = APIClient()
        client.force_authenticate(UserFactory.create(role=role, **user_fields))
        return client

    return make
