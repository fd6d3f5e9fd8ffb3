"""What a reconcile pass sees, and the only modules that look:

- ollama.py: the Ollama HTTP client, the only module that imports httpx;
- ollama_wire.py: Ollama's answers checked for shape and parsed, pure (the gateway shares it);
- gpu.py: GPU memory through NVML, the only module that imports pynvml;
- observation.py: the frozen data they build, which crosses to the planner;
- portholder.py: who holds a TCP port, for the message of an address that is taken.
"""
