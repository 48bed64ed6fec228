from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from dashboards.views import healthz
from integrations.views import webhook

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's).
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    ),
    path("webhooks/<int:connection_id>/", webhook, name="webhook"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("integrations.api.urls")),
    path("cases/", include("exceptions.urls")),
    path("config/", include("integrations.console.urls")),
    path("", include("dashboards.urls")),
]
