"""Pure decision logic: no I/O, no clocks, no asyncio. Time is passed in as `now`.

A test (tests/unit/test_core_purity.py) enforces that nothing under this
package imports asyncio, socket, time, aiohttp or an etcd client.
"""
