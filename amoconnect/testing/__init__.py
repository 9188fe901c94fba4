"""amoconnect's test kit, shipped for plugin authors and used by the core's own tests.

- :mod:`~amoconnect.testing.kit`: a running connector between the fakes (``connector``, ``ConnectorRig``);
- :mod:`~amoconnect.testing.pytest_plugin`: its pytest fixtures, loaded wherever amoconnect is installed;
- :mod:`~amoconnect.testing.conformance`: the conformance suite every messenger plugin passes;
- :mod:`~amoconnect.testing.fakes`: building blocks of a faithful fake messenger, and the suite's driver protocol;
- :mod:`~amoconnect.testing.fake_amojo`, :mod:`~amoconnect.testing.fake_amocrm`: amoCRM's APIs, faked;
- :mod:`~amoconnect.testing.fake_messenger`, :mod:`~amoconnect.testing.fakechat_api`: the reference messenger ``fake``;
- :mod:`~amoconnect.testing.servers`: serving an ASGI app on a loopback port;
- :mod:`~amoconnect.testing.faultproxy`: a reverse proxy that injects 429s, 500s, latency and dropped connections.

See docs/plugins.md.
"""
