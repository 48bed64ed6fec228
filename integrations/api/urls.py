from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from integrations.api import sync, views

router = DefaultRouter()
for prefix, model in views.RECORD_ENDPOINTS.items():
    router.register(prefix, views.record_viewset(model), basename=model._meta.model_name)
router.register("connections", views.ConnectionViewSet, basename="connection")
router.register("cross-references", views.CrossReferenceViewSet, basename="crossreference")
router.register("audit-events", views.AuditEventViewSet, basename="auditevent")
router.register("outbox", sync.OutboxMessageViewSet, basename="outboxmessage")
router.register("inbound", sync.InboundMessageViewSet, basename="inboundmessage")
router.register("sync-attempts", sync.SyncAttemptViewSet, basename="syncattempt")
router.register("ownership-rules", views.OwnershipRuleViewSet, basename="ownershiprule")

urlpatterns = [
    path("", include(router.urls)),
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
