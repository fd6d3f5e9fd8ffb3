"""The gateway: an optional reverse proxy in front of one Ollama instance, on the request
path (``gateway:`` in the policy). :mod:`.rules` decides what it changes in a request, pure;
the server relays everything else untouched."""
