"""Salesforce REST (no openly licensed spec: follows Salesforce's public REST documentation).

Served under ``/salesforce``; the token response's ``instance_url`` is
``<base>/salesforce``, so a client that appends Salesforce's own paths to ``instance_url``
works unchanged:

* ``POST /services/oauth2/token`` (client credentials);
* ``/services/data/v60.0/sobjects/{Account|Opportunity|Contract}``: POST creates (201
  ``{id, success, errors}``); ``/{id}`` GET (``?fields=``) and PATCH (204);
  ``/{External_Id__c}/{value}`` PATCH upserts (201 created / 200 updated);
* ``GET /services/data/v60.0/query?q=SOQL`` and ``/query/{cursor}`` for ``nextRecordsUrl``;
* ``/services/data/v60.0/composite/sobjects``: POST (create) / PATCH (update) up to 200
  records with ``allOrNone``; GET ``/composite/sobjects/{type}?ids=&fields=``.

Errors are Salesforce's JSON list ``[{"message", "errorCode", "fields"}]`` (collections use
``statusCode`` inside each result, as Salesforce does).

The ``Salesforce`` class is assembled from one mixin per part of the API, all on
``SalesforceBase`` (``base.py``: gate hooks and the record store): ``auth.py`` (token,
versions), ``sobjects.py`` (one record), ``composite.py`` (collections), ``query.py`` (SOQL
over cursors; the parser is ``soql.py``). Fields, ids and errors are in ``schema.py``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from .auth import Auth
from .composite import Composite
from .query import Query
from .schema import DATA
from .sobjects import SObjects


class Salesforce(Auth, SObjects, Composite, Query):
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/services/oauth2/token", self.token, methods=["POST"]),
            Route("/services/data", self.versions, methods=["GET"]),
            Route(f"{DATA}/query", self.query, methods=["GET"]),
            Route(f"{DATA}/query/{{cursor}}", self.query_more, methods=["GET"]),
            Route(f"{DATA}/composite/sobjects", self.collection_write, methods=["POST", "PATCH"]),
            Route(f"{DATA}/composite/sobjects/{{obj}}", self.collection_read, methods=["GET"]),
            Route(f"{DATA}/sobjects/{{obj}}", self.create, methods=["POST"]),
            Route(f"{DATA}/sobjects/{{obj}}/{{id}}", self.one, methods=["GET", "PATCH"]),
            Route(f"{DATA}/sobjects/{{obj}}/{{field}}/{{value}}", self.upsert, methods=["PATCH"]),
        ]
