from django.urls import path

from dashboards import actuals, provisioning, views

app_name = "dashboards"

urlpatterns = [
    path("", views.home, name="home"),
    path("finance/", views.finance, name="finance"),
    path("pmo/", views.pmo, name="pmo"),
    path("provisioning/", provisioning.board, name="provisioning"),
    path("provisioning/export/", provisioning.board_export, name="provisioning_export"),
    path("provisioning/<int:run_id>/", provisioning.run_detail, name="provisioning_run"),
    path("sales-ops/", views.sales_ops, name="sales_ops"),
    path("actuals/", actuals.actuals, name="actuals"),
    path("integration-admin/", views.integration_admin, name="integration_admin"),
]
