from csp.decorators import csp_update
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from integrations.api import (
    actuals,
    auth,
    config_files,
    identity,
    mappings,
    reconciliation,
    sync,
    views,
)

router = DefaultRouter()
router.APIRootView = auth.ApiRootView
for prefix, model in views.RECORD_ENDPOINTS.items():
    router.register(prefix, views.record_viewset(model), basename=model._meta.model_name)
router.register("connections", views.ConnectionViewSet, basename="connection")
router.register("cross-references", views.CrossReferenceViewSet, basename="crossreference")
router.register("audit-events", views.AuditEventViewSet, basename="auditevent")
router.register("outbox", sync.OutboxMessageViewSet, basename="outboxmessage")
router.register("inbound", sync.InboundMessageViewSet, basename="inboundmessage")
router.register("sync-attempts", sync.SyncAttemptViewSet, basename="syncattempt")
router.register("ownership-rules", views.OwnershipRuleViewSet, basename="ownershiprule")
router.register("merges", identity.RecordMergeViewSet, basename="recordmerge")
router.register("mappings", mappings.MappingSetViewSet, basename="mappingset")
router.register(
    "reconciliation/runs", reconciliation.ReconciliationRunViewSet, basename="reconciliationrun"
)
router.register(
    "reconciliation/gaps", reconciliation.ReconciliationGapViewSet, basename="reconciliationgap"
)

urlpatterns = [
    *(
        path(
            f"{prefix}/<int:pk>/merge/",
            identity.RecordMergeView.as_view(model=model),
            name=f"{model._meta.model_name}-merge",
        )
        for prefix, model in identity.MERGEABLE.items()
    ),
    path("", include(router.urls)),
    # The exception queues: /cases/ and /queues/ (exceptions/api.py).
    path("", include("exceptions.api")),
    path("actuals/", actuals.ActualsView.as_view(), name="api-actuals"),
    path("config/export/", config_files.ConfigExportView.as_view(), name="api-config-export"),
    path("config/import/", config_files.ConfigImportView.as_view(), name="api-config-import"),
    path("auth/token/", auth.TokenObtainView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Swagger UI with no inline script or style: the split view serves its start-up script from
    # `?script` (same origin) and our template links a stylesheet. Its own stylesheet draws icons
    # as data: images, the one source this page adds to the site-wide policy.
    path(
        "docs/",
        csp_update({"img-src": ["data:"]})(
            SpectacularSwaggerSplitView.as_view(
                url_name="api-schema", template_name="api/swagger_ui.html"
            )
        ),
        name="api-docs",
    ),
]
