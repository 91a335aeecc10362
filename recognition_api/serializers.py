"""Request and response shapes; the response serializers document the API (OpenAPI)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers


class WaitQuerySerializer(serializers.Serializer):
    wait = serializers.FloatField(
        required=False,
        default=0.0,
        min_value=0.0,
        help_text="Seconds to wait for the result (bounded by MAX_WAIT_SECONDS, 30 by default).",
    )

    def validate_wait(self, value: float) -> float:
        if value > settings.MAX_WAIT_SECONDS:
            raise serializers.ValidationError(
                f"wait must be at most {settings.MAX_WAIT_SECONDS:g} seconds."
            )
        return value


class RecognizeInputSerializer(serializers.Serializer):
    image = serializers.FileField(
        help_text="The listing photo: JPEG, PNG, WebP or HEIC, at most 10 MiB by default."
    )


class AlternativeSerializer(serializers.Serializer):
    value = serializers.CharField()
    confidence = serializers.FloatField()


class FieldSerializer(serializers.Serializer):
    value = serializers.CharField(
        allow_null=True, help_text="null when the confidence is below the field's threshold"
    )
    confidence = serializers.FloatField()
    threshold = serializers.FloatField()
    alternatives = AlternativeSerializer(many=True)


class ResultSerializer(serializers.Serializer):
    name = FieldSerializer()
    category = FieldSerializer()
    brand = FieldSerializer()
    color = FieldSerializer()


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobSerializer(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed"])
    model = ModelSerializer()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    timings_ms = serializers.DictField(
        child=serializers.FloatField(),
        help_text="queue_wait, decode, prepare, batch_wait, inference, total; batch_size",
    )
    result = ResultSerializer(allow_null=True)
    error = ErrorDetailSerializer(allow_null=True)
    request_id = serializers.CharField(allow_null=True)
    location = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class FeedbackInputSerializer(serializers.Serializer):
    """What the seller finally listed; any subset of the four fields, null or "" for a field
    the seller left blank."""

    name = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    category = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    brand = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    color = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError(f"unknown field(s): {', '.join(unknown)}; "
                                              "give any of name, category, brand, color.")
        if not attrs:
            raise serializers.ValidationError("give at least one of name, category, brand, color.")
        return attrs


class FeedbackSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the job's id")
    model = ModelSerializer()
    outcomes = serializers.DictField(
        child=serializers.ChoiceField(choices=["accepted", "changed", "filled", "blank"]),
        help_text="per field given: accepted as suggested, changed, filled where the model gave "
                  "none, or left blank as the model did",
    )
