"""What changes the world:

- reconcile.py: one pass, observe -> plan -> act (idempotent HTTP calls), and ``once``'s settling;
- state.py: what the keeper remembers across restarts (each model's footprint);
- atomicfile.py: files replaced or removed whole, the old or the new, never a mix.
"""
