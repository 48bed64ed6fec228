"""The configuration console: the pages integration admins keep the integration in shape with
(mounted at /config/ by config/urls.py). One module per area, each with its own `urlpatterns`:

- connections (base URL, write-only credentials, limits, test button): console/connections.py
- schedules (django-celery-beat's polling and reconciliation tasks): console/schedules.py
- rules (ownership, case routing, legal entity to ERP): console/rules.py
- mappings (editor, versions, diff, preview, publish, rollback, four-eyes): console/mappings.py
- configuration as files (export, dry-run import): console/files.py

Every page and action needs the integration-admin permission (`admin_required`); writes go
through the audited services of integrations/ and exceptions/, never straight to the models.
"""
