from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from integrations.roles import ROLES
from tests.factories import UserFactory


@pytest.fixture
def user_with_role(db: None) -> Callable[[str | None], User]:
    def make(role: str | None) -> User:
        return UserFactory.create(role=role)

    return make


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture(params=ROLES)
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)
