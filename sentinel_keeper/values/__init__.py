"""Values as the policy, Ollama and systemd write them: pure rules that import nothing of
the package but each other and :mod:`sentinel_keeper.ollama_env`'s Go parsers, so that every
layer may use them.

- quantities.py: durations and sizes, parsed and printed;
- names.py: model names as Ollama normalises and compares them;
- urls.py: Ollama's address (OLLAMA_HOST's rule); listen.py: a ``host:port`` to listen on;
- unitname.py: the service names a policy may give for Ollama's unit;
- text.py: untrusted text made safe for one line of output;
- timings.py: every delay and limit the daemon keeps besides the policy's ``interval``;
- figures.py: the value types the gateway and the metrics share (so neither imports the other).
"""
