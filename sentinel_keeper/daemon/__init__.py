"""The daemon, `sentinel-keeper run`.

- service.py: the main loop: signals, reloads, the ticks and the calls to sd_notify;
- publish.py: the metrics, /ready and /live, and the gateway's view, from the main thread;
- instance.py: one Ollama instance's pass loop, and what the main thread keeps of it;
- lifecycle.py: its decisions (READY, STATUS, the watchdog, reloads, probes), pure;
- worker.py: the one thread that runs passes and the watch between them;
- engine.py: the policy in force with its Ollama client, GPU probe and reconciler;
- progress.py: whether a pass is within its time limits;
- watch.py: what the look at /api/ps between passes reacts to;
- runtime.py: the Ollama client and reconciler the daemon and the CLI open;
- schedule.py: when passes are due (APScheduler).
Its signal handlers are sentinel_keeper.systemd.signals, which the gateway's process shares.

Importing the package loads nothing else: lifecycle.py stays pure (tests/test_layers.py).
"""
