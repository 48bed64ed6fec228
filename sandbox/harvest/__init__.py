"""The Harvest v2 look-alike, one module per resource; see vendor.py for how they fit."""

from .kinds import KINDS
from .schema import ACCOUNT_ID, SYSTEM, TOKENS
from .vendor import Harvest

__all__ = ["ACCOUNT_ID", "KINDS", "SYSTEM", "TOKENS", "Harvest"]
