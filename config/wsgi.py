import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_wsgi_application()

from integrations.wsgi import with_webhook_receiver  # noqa: E402 - needs Django set up

# Webhooks are answered before Django's middleware; everything else is Django's.
application = with_webhook_receiver(django_application)
