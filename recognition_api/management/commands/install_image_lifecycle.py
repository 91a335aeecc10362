from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.imagestore import S3ImageStore, image_store_from_url


class Command(BaseCommand):
    help = ("Install the S3 lifecycle rule that expires uploaded photos after IMAGE_TTL_SECONDS, scoped to "
            "IMAGE_STORE_URL's prefix, keeping the bucket's other rules. Run once per bucket and prefix, and "
            "after changing IMAGE_TTL_SECONDS (k8s/jobs/image-lifecycle/).")

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--dry-run", action="store_true", help="print the rule, change nothing")

    def handle(self, *args, dry_run: bool = False, **options) -> None:  # type: ignore[no-untyped-def]
        try:
            store = image_store_from_url(settings.IMAGE_STORE_URL, s3_endpoint_url=settings.S3_ENDPOINT_URL)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not isinstance(store, S3ImageStore):
            raise CommandError(f"IMAGE_STORE_URL={store.url} is not on S3: the workers sweep a local store "
                               "themselves, no rule to install")
        rule = store.lifecycle_rule(settings.IMAGE_TTL_SECONDS)
        self.stdout.write(f"bucket {store.bucket}: {json.dumps(rule)}")
        if dry_run:
            return
        changed = store.install_lifecycle(settings.IMAGE_TTL_SECONDS)
        self.stdout.write("installed" if changed else "already installed")
