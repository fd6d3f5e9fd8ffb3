"""The gateway: an optional reverse proxy in front of one Ollama instance, on the request
path (``gateway:`` in the policy), in its own process.

- rules.py: what it changes in a request, and why, pure;
- gojson.py: a body read as Ollama's Go handlers read it; target.py: a request target as Ollama's
  Go server routes it; both pure;
- server.py: the aiohttp relay, the only module that imports aiohttp;
- measure.py: what it measures of each request; ready.py: its own ``/ready`` and ``/live``;
- runner.py: the server as the process drives it; process.py: `sentinel-keeper gateway`, its
  signals, fail-open, drain and upgrade;
- exchange.py: the files the keeper and the gateway hand each other.
"""
