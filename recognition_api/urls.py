from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from recognition_api import views

urlpatterns = [
    path("recognize", views.RecognizeApi.as_view(), name="recognize"),
    path("v1/recognize", views.RecognizeApi.as_view(), name="recognize-v1"),
    path("v1/recognitions/<str:job_id>", views.RecognitionDetailApi.as_view(), name="recognition-detail"),
    path("v1/recognitions/<str:job_id>/feedback", views.RecognitionFeedbackApi.as_view(),
         name="recognition-feedback"),
    path("healthz", views.HealthApi.as_view(), name="healthz"),
    path("readyz", views.ReadyApi.as_view(), name="readyz"),
    path(
        "openapi.json",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        {"format": "json"},
        name="openapi",
    ),
]

handler404 = "recognition_api.views.not_found"
handler500 = "recognition_api.views.server_error"
