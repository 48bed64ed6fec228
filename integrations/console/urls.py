"""The console's URLs: each area's module brings its own `urlpatterns` (see console/__init__)."""

from integrations.console import index

app_name = "console"

urlpatterns = [*index.urlpatterns]
