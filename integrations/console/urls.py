"""The console's URLs: each area's module brings its own `urlpatterns` (see console/__init__)."""

from integrations.console import connections, files, index, mappings, rules, schedules

app_name = "console"

urlpatterns = [
    *index.urlpatterns,
    *mappings.urlpatterns,
    *connections.urlpatterns,
    *schedules.urlpatterns,
    *rules.urlpatterns,
    *files.urlpatterns,
]
