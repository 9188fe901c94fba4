"""Run the connector for the benchmarks: what ``amoconnect run --plugin fake --config FILE`` does.

The runtime and its HTTP server are the real ones (:class:`~amoconnect.runtime.Runtime` behind
:func:`~amoconnect.runtime.serve`); the only difference from the CLI is that the plugin manager
loads just the reference messenger ``fake`` (:mod:`amoconnect.testing.fake_messenger`), so that
whatever other plugins are installed cannot change the measurement.

    python bench/connector.py --config /tmp/bench/amoconnect.toml --log-level warning
"""

from __future__ import annotations

import argparse

import anyio
from _calls import install as count_calls

from amoconnect.config import load_config
from amoconnect.logging import configure
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime, loop_options, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args()
    count_calls()  # bench_cpu.py --calls
    config = load_config(args.config)
    configure(level=args.log_level or config.log_level, secrets=config.secrets())
    pm = get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect.testing.fake_messenger"])

    async def go() -> None:
        runtime = Runtime(config, plugin="fake", plugin_manager=pm)
        await serve(runtime, host=config.server.host, port=config.server.port, dedicated=True)

    anyio.run(go, backend_options=loop_options())


if __name__ == "__main__":
    main()
