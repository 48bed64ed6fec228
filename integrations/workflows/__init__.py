"""Business workflows: one module per process. Each registers the steps that follow its
deliveries with the sync layer (integrations/sync/steps.py) when imported; importing this
package (integrations/apps.py does, at start-up) registers them all."""

from integrations.workflows import (
    back_sync,
    change_orders,
    checks,
    fixes,
    milestones,
    provisioning,
    reconciliation,
    time_to_erp,
)

__all__ = [
    "back_sync",
    "change_orders",
    "checks",
    "fixes",
    "milestones",
    "provisioning",
    "reconciliation",
    "time_to_erp",
]
