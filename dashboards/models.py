from django.db import models


class DashboardAccess(models.Model):
    """Holds the permissions for the role pages; no table (pages read other apps' data)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_finance", "Can see the finance pages"),
            ("view_pmo", "Can see the PMO pages"),
            ("view_sales_ops", "Can see the sales ops pages"),
            ("view_integration_admin", "Can see the integration admin pages"),
        ]

    def __str__(self) -> str:
        return "dashboard access"
