"""A Django ASGI app, configured in code (no project directory needed)."""
import json

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="h3gate-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def home(request):
    return JsonResponse({"framework": "django", "method": request.method,
                         "path": request.path, "scheme": request.scheme,
                         "host": request.get_host(), "query": request.GET.get("q")})


def echo(request):
    return HttpResponse(request.body, content_type="application/octet-stream")


def stream(request):
    return StreamingHttpResponse((f"row {i}\n" for i in range(4)), content_type="text/plain")


def info(request):
    return HttpResponse(json.dumps({"remote_addr": request.META.get("REMOTE_ADDR"), "cookies": request.COOKIES}),
                        content_type="application/json")


urlpatterns = [path("", home), path("echo", echo), path("stream", stream), path("info", info)]
app = get_asgi_application()
