"""How a failed call is classified. Plain data with no models, at the bottom of the layers: the
connectors classify (integrations/connectors/errors.py, which the limiter's plain-Python test
processes import without Django set up) and the models store the class."""

from __future__ import annotations

from django.db import models


class ErrorClass(models.TextChoices):
    """Who a failure is for (connectors classify every failed call): transient faults stay with
    the machine (retried with backoff), permanent ones go to the integration admins, business
    ones (the vendor refused the data) to the data's owner."""

    TRANSIENT = "transient", "Transient (retried)"
    PERMANENT = "permanent", "Permanent"
    BUSINESS = "business", "Business rule"
