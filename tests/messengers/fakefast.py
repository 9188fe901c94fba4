"""fakechat's adapter without its declared send rate limit, for load tests (the fake itself throttles nothing)."""

from __future__ import annotations

from amoconnect import hookimpl
from amoconnect.hookspecs import RegisterMessenger
from amoconnect.testing.fake_messenger import FakeChatAdapter


class UnthrottledFakeChatAdapter(FakeChatAdapter):
    name = "fakefast"
    rate_limits = ()


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    register(UnthrottledFakeChatAdapter)
