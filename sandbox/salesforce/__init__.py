"""The Salesforce REST look-alike, one module per part of the API; see vendor.py."""

from .auth import CLIENT_ID, CLIENT_SECRET
from .schema import ORG_ID, SYSTEM
from .vendor import Salesforce

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "ORG_ID", "SYSTEM", "Salesforce"]
