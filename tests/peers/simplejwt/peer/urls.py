"""simplejwt's own views at the paths its documentation uses, and one protected endpoint."""

from django.urls import path
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView


@api_view(["GET"])
def items(request):
    return Response({"user": request.user.get_username(), "items": []})


urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
    path("api/items/", items),
]
