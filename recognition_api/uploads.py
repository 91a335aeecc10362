from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import MemoryFileUploadHandler

from common.errors import ImageTooLarge


class LimitedMemoryUploadHandler(MemoryFileUploadHandler):
    """Keep uploads in memory and stop reading as soon as one passes the limit.

    The view already rejects a too-large Content-Length; this also covers chunked
    uploads, which announce no length.
    """

    def new_file(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._received = 0
        super().new_file(*args, **kwargs)  # raises StopFutureHandlers: keep it last

    def receive_data_chunk(self, raw_data: bytes, start: int):  # type: ignore[no-untyped-def]
        self._received += len(raw_data)
        if self._received > settings.MAX_UPLOAD_BYTES:
            raise ImageTooLarge(f"The image is larger than the limit of {settings.MAX_UPLOAD_BYTES:,} bytes.")
        return super().receive_data_chunk(raw_data, start)

    def handle_raw_input(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().handle_raw_input(*args, **kwargs)
        self.activated = True  # always in memory, whatever the Content-Length says
