from django.apps import AppConfig


class RecognitionApiConfig(AppConfig):
    name = "recognition_api"
    verbose_name = "Listing-photo recognition API"
