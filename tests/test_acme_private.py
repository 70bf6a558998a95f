"""The private `acme` names of appliance/tls/acme_private.py: this fails loudly when `acme` changes
them, before a renewal in the field would."""

from __future__ import annotations

import inspect

import pytest
from acme import client, messages

from appliance.tls import acme_private


@pytest.mark.parametrize("name", ["_post", "_post_as_get"])
def test_the_private_names_are_there_and_take_a_url(name: str) -> None:
    method = getattr(client.ClientV2, name, None)
    assert method is not None, f"acme.client.ClientV2.{name} is gone: see appliance/tls/acme_private.py"
    params = list(inspect.signature(method).parameters)
    assert params[:1] == ["self"] and "args" in params, (name, params)


class _Net:
    """Stands in for `ClientNetwork`: records what the client's private wrappers hand it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def post(self, *args: object, **kwargs: object) -> str:
        self.calls.append((args, kwargs))
        return "response"


def _client(net: _Net) -> client.ClientV2:
    directory = messages.Directory.from_json({"newNonce": "https://ca.test/nonce",
                                              "newOrder": "https://ca.test/order"})
    return client.ClientV2(directory, net)  # type: ignore[arg-type]  # _Net records the call only


def test_post_signs_for_the_url_with_the_new_nonce_url() -> None:
    net = _Net()
    order = messages.NewOrder(identifiers=[])
    assert acme_private.post(_client(net), "https://ca.test/order", order) == "response"
    assert net.calls == [(("https://ca.test/order", order),
                          {"new_nonce_url": "https://ca.test/nonce"})]


def test_post_as_get_sends_an_empty_body() -> None:
    net = _Net()
    assert acme_private.post_as_get(_client(net), "https://ca.test/order/1") == "response"
    assert net.calls == [(("https://ca.test/order/1", None),
                          {"new_nonce_url": "https://ca.test/nonce"})]
