"""What the keeper says:

- render.py: text and JSON of what a pass saw and did (`once`, `status`, STATUS=), pure;
- events.py: what the daemon logs about a pass, from what it remembers of earlier ones, pure;
- logevent.py: one log line as data, shared by the daemon, the gateway and the metrics;
- logs.py: the output, through structlog: one event per line, journald priority prefixes.
"""
