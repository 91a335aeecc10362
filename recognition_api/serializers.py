"""Request and response shapes; the response serializers document the API (OpenAPI)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from recognition_api.errors import error_code_choices


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


class RecognizeUrlInputSerializer(serializers.Serializer):
    """A photo the app has put on S3 already (also taken as a multipart form field without a file)."""

    image_url = serializers.CharField(
        max_length=2048, trim_whitespace=False,
        help_text="s3://bucket/key of the photo, under a prefix of the service's IMAGE_URL_ALLOWED; the object "
                  "is checked like an upload.",
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
    code = serializers.ChoiceField(
        choices=error_code_choices(),
        help_text="Stable and machine-readable: branch on it (never on the message).",
    )
    message = serializers.CharField(help_text="For people; it may change.")


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


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok"])


class RedisCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    ping_ms = serializers.FloatField(required=False)
    error = serializers.CharField(required=False, help_text="the exception's class, when Redis did not answer")


class ReadinessSerializer(serializers.Serializer):
    ready = serializers.BooleanField()
    redis = RedisCheckSerializer()
    active_version = serializers.CharField(required=False, help_text="the version new jobs go to")
    ready_workers = serializers.IntegerField(required=False, help_text="of the active version")
    canary_version = serializers.CharField(required=False)
    canary_ready_workers = serializers.IntegerField(required=False)


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


class RolloutQuerySerializer(serializers.Serializer):
    window = serializers.FloatField(
        required=False, default=86400.0, min_value=60.0, max_value=8 * 86400.0,
        help_text="Seconds of live figures (jobs, accuracy, shadow agreement): 60 to 8 days, a day by default.",
    )


class PerFieldSerializer(serializers.Serializer):
    name = serializers.FloatField(allow_null=True)
    category = serializers.FloatField(allow_null=True)
    brand = serializers.FloatField(allow_null=True)
    color = serializers.FloatField(allow_null=True)


class RolloutVersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    role = serializers.ChoiceField(choices=["active", "canary", "previous", ""])
    ready_workers = serializers.IntegerField()
    queue = serializers.CharField()
    queue_depth = serializers.IntegerField()
    verified = serializers.BooleanField(help_text="`verify` passed and was recorded")
    jobs = serializers.IntegerField(help_text="jobs finished in the window (shadow copies included)")
    accuracy = PerFieldSerializer(help_text="live accuracy per field from sellers' feedback; null without any")
    feedback = serializers.DictField(child=serializers.IntegerField(), help_text="feedback counted per field")
    shadow_agreement = PerFieldSerializer(
        required=False, help_text="only for the shadow version: agreement with the active version per field")
    shadow_compared = serializers.IntegerField(required=False)


class RolloutSerializer(serializers.Serializer):
    """What ``python -m models_registry status --json`` prints."""

    active = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    canary = serializers.CharField(allow_null=True)
    canary_weight = serializers.FloatField()
    shadow = serializers.CharField(allow_null=True)
    shadow_fraction = serializers.FloatField()
    updated_by = serializers.CharField(allow_null=True)
    updated_at = serializers.FloatField(allow_null=True, help_text="Unix time of the last change")
    window_seconds = serializers.FloatField()
    versions = RolloutVersionSerializer(many=True)
