"""One small error hierarchy shared by the API and the workers.

Every error carries a stable machine-readable ``code`` (clients branch on it, so
never rename one) and a human message. The API maps them to HTTP in exactly one
place (``recognition_api.errors``); the worker stores ``code`` and ``message`` on
the failed job.
"""

from __future__ import annotations


class RecognitionError(Exception):
    code = "error"
    http_status = 500
    default_message = "Unexpected error."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        super().__init__(self.message)


# --- input problems (4xx) -------------------------------------------------------------


class InvalidInput(RecognitionError):
    """Something about the request is wrong; the subclasses say what."""

    code = "invalid_input"
    http_status = 400


class ImageMissing(InvalidInput):
    code = "image_missing"
    default_message = (
        "Send the photo as the multipart form field 'image', or where it is on S3 as JSON "
        '{"image_url": "s3://bucket/key"}.'
    )


class ImageUrlNotAllowed(InvalidInput):
    """An image_url this service will not read: another scheme, bucket or prefix, an unplain key."""

    code = "image_url_not_allowed"
    default_message = "image_url is not an S3 location this service is configured to read."


class ImageUrlNotFound(InvalidInput):
    code = "image_url_not_found"
    http_status = 422
    default_message = "There is no object at image_url."


class ImageUrlForbidden(InvalidInput):
    code = "image_url_forbidden"
    http_status = 403
    default_message = "This service may not read the object at image_url."


class ImageEmpty(InvalidInput):
    code = "image_empty"
    default_message = "The uploaded image is empty (0 bytes)."


class ImageTooLarge(InvalidInput):
    """The upload (or the object at image_url) is larger than MAX_UPLOAD_BYTES."""

    code = "image_too_large"
    http_status = 413


class ImageNotAnImage(InvalidInput):
    """The bytes are not an image, whatever the file name or MIME type says."""

    code = "image_not_an_image"
    http_status = 415


class ImageUnsupportedFormat(InvalidInput):
    """An image, but not JPEG, PNG, WebP or HEIC/HEIF (GIF, BMP, TIFF, ...)."""

    code = "image_unsupported_format"
    http_status = 415


class ImageCorrupt(InvalidInput):
    """Truncated or damaged image data."""

    code = "image_corrupt"
    http_status = 422


class ImageTooManyPixels(InvalidInput):
    """More than MAX_IMAGE_PIXELS (a decompression bomb), refused before decoding."""

    code = "image_too_many_pixels"
    http_status = 422


class ImageTooSmall(InvalidInput):
    """A side is shorter than MIN_IMAGE_SIDE pixels."""

    code = "image_too_small"
    http_status = 422


class ImageTooManyScans(InvalidInput):
    code = "image_too_many_scans"
    http_status = 422
    default_message = "The JPEG has too many progressive scans to decode at a bounded cost; re-encode it."


class LengthRequired(InvalidInput):
    code = "length_required"
    http_status = 411
    default_message = "Send the upload with a Content-Length header (chunked uploads are not accepted)."


class InvalidParameter(InvalidInput):
    """A parameter or body field is invalid (e.g. `wait` out of range); the message says which."""

    code = "invalid_parameter"


class JobNotFound(RecognitionError):
    code = "job_not_found"
    http_status = 404
    default_message = "No recognition job with this id (it may have expired)."


class FeedbackConflict(RecognitionError):
    """Feedback that the job cannot take (409): given already, or on an unfinished or failed job."""

    code = "feedback_conflict"
    http_status = 409


class FeedbackExists(FeedbackConflict):
    code = "feedback_exists"
    default_message = "Feedback for this job was given already; it is kept once."


class JobNotSucceeded(FeedbackConflict):
    code = "job_not_succeeded"
    default_message = "Feedback is taken only for a job that succeeded."


# --- capacity and availability (429/503, always with Retry-After) ---------------------


class QueueFull(RecognitionError):
    code = "queue_full"
    http_status = 429
    default_message = "Too many photos are waiting to be recognized; retry shortly."


class RateLimited(RecognitionError):
    code = "rate_limited"
    http_status = 429
    default_message = "This API key is sending more than its limit; retry later."


class ServiceUnavailable(RecognitionError):
    code = "service_unavailable"
    http_status = 503
    default_message = "The recognition service is temporarily unavailable; retry shortly."


class DecodeBusy(ServiceUnavailable):
    code = "overloaded"
    default_message = "Too many large images are being decoded right now; retry shortly."


class NotReplicated(ServiceUnavailable):
    code = "not_replicated"
    default_message = "The job could not be stored on enough Redis replicas in time; retry shortly."


class NoActiveModel(ServiceUnavailable):
    code = "no_active_model"
    default_message = "No model version is active; an operator must promote one."


class ImageUrlUnavailable(ServiceUnavailable):
    code = "image_url_unavailable"
    default_message = "S3 did not answer in time for image_url; retry shortly."


# --- failures recorded on jobs by the worker ------------------------------------------


class JobFailure(RecognitionError):
    """A job ended ``failed``; stored on the job, never raised to an HTTP client."""

    code = "job_failed"


class ImageUnavailable(JobFailure):
    code = "image_unavailable"
    default_message = "The stored image could not be read (it may have expired)."


class ImageDecodeFailed(JobFailure):
    code = "image_decode_failed"
    default_message = "The image could not be decoded."


class InferenceFailed(JobFailure):
    code = "inference_failed"
    default_message = "The model failed on this image."


class DeliveryLimitExceeded(JobFailure):
    code = "delivery_limit_exceeded"
    default_message = (
        "The job was delivered too many times without finishing (each attempt "
        "ended with a lost worker); it was stopped to protect the workers."
    )


class DeadlineExceeded(JobFailure):
    code = "deadline_exceeded"
    default_message = (
        "The job was not started before its deadline (its client's wait, plus a grace, or "
        "JOB_DEADLINE_SECONDS): nobody waits for the result any more, so it was not computed."
    )
