from django.urls import path

from dashboards import actuals, views

app_name = "dashboards"

urlpatterns = [
    path("", views.home, name="home"),
    path("finance/", views.finance, name="finance"),
    path("pmo/", views.pmo, name="pmo"),
    path("sales-ops/", views.sales_ops, name="sales_ops"),
    path("actuals/", actuals.actuals, name="actuals"),
    path("integration-admin/", views.integration_admin, name="integration_admin"),
]
