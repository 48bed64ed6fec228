"""Business workflows: one module per process. Each registers the steps that follow its
deliveries with the sync layer (integrations/sync/steps.py) when imported; importing this
package (integrations/apps.py does, at start-up) registers them all."""

from integrations.workflows import fixes, provisioning, reconciliation, time_to_erp

__all__ = ["fixes", "provisioning", "reconciliation", "time_to_erp"]
