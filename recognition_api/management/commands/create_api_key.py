from django.core.management.base import BaseCommand

from recognition_api.auth import new_key


class Command(BaseCommand):
    help = "Create an API key: prints the key (give it to the client) and the API_KEYS entry."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("client", help="a name for the client, e.g. mobile-app")
        parser.add_argument("--ops", action="store_true",
                            help="with the ops scope: reads every job and the rollout state (GET /v1/rollout)")

    def handle(self, *args, client: str, ops: bool = False, **options):  # type: ignore[no-untyped-def]
        if ":" in client or "," in client:
            self.stderr.write("The client name may not contain ':' or ','.")
            raise SystemExit(2)
        key, digest = new_key()
        self.stdout.write(f"key:      {key}")
        self.stdout.write(f"API_KEYS: {client}:{digest}" + (";scopes=ops" if ops else ""))
