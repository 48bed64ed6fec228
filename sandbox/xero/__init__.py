"""The Xero look-alike (identity and Accounting API), one module per resource family.

See vendor.py for how the modules fit together.
"""

from .identity import CLIENT_ID, CLIENT_SECRET
from .tenants import LEGACY, NEW, TENANTS, Tenant
from .vendor import Xero

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "LEGACY", "NEW", "TENANTS", "Tenant", "Xero"]
