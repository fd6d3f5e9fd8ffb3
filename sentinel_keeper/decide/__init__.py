"""Pure decisions: functions of the policy, an observation and the time. Nothing here does
I/O (tests/test_layers.py).

- plan.py: the planner, (policy, observation, now) -> actions with reasons, and findings;
- capacity.py: what Ollama will do with memory and model counts (footprints, the model-count
  limit, the share of free memory a new model may take), for the planner, gateway and metrics;
- context.py: the context length a client gets without num_ctx, and lining the pinned up;
- client_reloads.py: which models to leave to a client that loads them with another num_ctx;
- causes.py: why a policy model left Ollama's memory, and so why it is loaded again;
- readiness.py: what ``/ready`` and ``/live`` answer for a load balancer.
"""
