"""sentinel-keeper's drop-in for Ollama's unit:

- render.py: its text, from the policy;
- unitfile.py: other files that set the same variables, read as systemd reads them;
- apply.py: `sentinel-keeper apply-override` (compare, write atomically, tell systemd);
- takeover.py: the gateway taking Ollama's address over, and giving it back, at a reload.
"""
