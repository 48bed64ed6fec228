"""config.auth_backends: the same permission sets as Django's ModelBackend, in one query."""

from __future__ import annotations

import pytest
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from config.auth_backends import OneQueryModelBackend
from integrations import roles

pytestmark = pytest.mark.django_db


def _perm(codename: str) -> Permission:
    return Permission.objects.get(codename=codename, content_type__app_label="integrations")


@pytest.fixture
def user() -> User:
    person = User.objects.create_user("mixed", password="x" * 20)
    person.user_permissions.add(_perm("view_customer"))
    team = Group.objects.create(name="a team")
    team.permissions.add(_perm("view_project"), _perm("change_project"))
    other = Group.objects.create(name="another team")
    other.permissions.add(_perm("view_project"), _perm("view_invoice"))
    person.groups.add(team, other)
    return person


def test_same_sets_as_djangos_backend_in_one_query(
    user: User, django_assert_num_queries: object
) -> None:
    django = ModelBackend()
    expected = (
        django.get_user_permissions(User.objects.get(pk=user.pk)),
        django.get_group_permissions(User.objects.get(pk=user.pk)),
    )
    fresh = User.objects.get(pk=user.pk)
    backend = OneQueryModelBackend()
    with django_assert_num_queries(1):  # type: ignore[operator]
        got = (backend.get_group_permissions(fresh), backend.get_user_permissions(fresh))
        assert backend.get_all_permissions(fresh) == expected[0] | expected[1]
        assert backend.has_perm(fresh, "integrations.view_invoice")
        assert not backend.has_perm(fresh, "integrations.delete_invoice")
    assert got == (expected[1], expected[0])
    assert got[1] == {"integrations.view_customer"}
    assert got[0] == {
        "integrations.view_project",
        "integrations.change_project",
        "integrations.view_invoice",
    }


def test_superuser_inactive_and_object_permissions_as_django(user: User) -> None:
    backend, django = OneQueryModelBackend(), ModelBackend()
    root = User.objects.create_superuser("root", password="x" * 20)
    assert backend.get_all_permissions(root) == django.get_all_permissions(
        User.objects.get(pk=root.pk)
    )
    assert len(backend.get_all_permissions(root)) == Permission.objects.count()
    user.is_active = False
    assert backend.get_all_permissions(user) == set()
    assert backend.get_group_permissions(User.objects.get(pk=user.pk), obj=user) == set()


def test_a_page_reads_the_users_permissions_once(client: Client) -> None:
    """The gate and the navigation of a page both read permissions: one query between them."""
    person = User.objects.create_user("finance person", password="x" * 20)
    person.groups.add(Group.objects.get(name=roles.FINANCE))
    client.force_login(person)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("dashboards:finance")).status_code == 200
    reads = [q["sql"] for q in queries.captured_queries if '"auth_permission"' in q["sql"]]
    assert len(reads) == 1, reads
