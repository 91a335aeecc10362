from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from recognition_api import apidocs, pages, views

urlpatterns = [
    path("recognize", views.RecognizeApi.as_view(), name="recognize"),
    path("v1/recognize", views.RecognizeV1Api.as_view(), name="recognize-v1"),
    path("v1/recognitions/<str:job_id>", views.RecognitionDetailApi.as_view(), name="recognition-detail"),
    path("v1/recognitions/<str:job_id>/feedback", views.RecognitionFeedbackApi.as_view(),
         name="recognition-feedback"),
    path("healthz", views.HealthApi.as_view(), name="healthz"),
    path("readyz", views.ReadyApi.as_view(), name="readyz"),
    path("v1/rollout", views.RolloutApi.as_view(), name="rollout-v1"),
    # The web page and its assets (recognition_api/pages.py)
    path("", pages.home, name="web-home"),
    path("rollout", pages.rollout, name="web-rollout"),
    path("ui/<str:digest>/<str:name>", pages.asset, name="web-asset"),
    path(
        "openapi.json",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        {"format": "json"},
        name="openapi",
    ),
    # The document for people, and the Swagger UI / Redoc files they load (recognition_api/apidocs.py)
    path("docs", apidocs.SwaggerUiView.as_view(), name="docs"),
    path("redoc", apidocs.RedocView.as_view(), name="redoc"),
    path("static/drf_spectacular_sidecar/<path:path>", apidocs.sidecar_asset, name="sidecar-asset"),
]

handler404 = "recognition_api.views.not_found"
handler500 = "recognition_api.views.server_error"
