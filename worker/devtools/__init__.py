"""Tools for development, tests, benchmarks and the demo; never needed in production.

local_redis.py      a private redis-server on a free loopback port
local_amplitude.py  an Amplitude-compatible /identify server, with faults on request
local_stack.py      the local servers and worker processes, started and stopped
local_ingest.py     `identify-queue serve` as a process
demo.py             the quickstart's end-to-end run on embedded defaults
"""
