"""The exception queue pages (mounted at /cases/ by config/urls.py).

- the queue list, its CSV export and its bulk actions, "my work" and the SLA view:
  exceptions/views/queues.py
- one case's page and its actions (retry, group retry, waive, assign, take, reassign, comment):
  exceptions/views/cases.py
- the fix-in-place form the catalogue names for a case's type: exceptions/views/fixes.py
"""

from django.urls import path

from exceptions.views import cases, fixes, queues

app_name = "exceptions"

urlpatterns = [
    path("", queues.case_list, name="queue"),
    path("export.csv", queues.case_export, name="export"),
    path("bulk/", queues.case_bulk, name="bulk"),
    path("mine/", queues.my_work, name="my_work"),
    path("sla/", queues.sla_overview, name="sla"),
    path("<int:case_id>/", cases.case_detail, name="case"),
    # Before the actions' pattern, which "fix" would match too.
    path("<int:case_id>/fix/", fixes.case_fix, name="fix"),
    path("<int:case_id>/<slug:action>/", cases.case_action, name="action"),
]
