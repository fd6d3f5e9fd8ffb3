"""Living under systemd:

- systemctl.py: everything sentinel-keeper asks systemd, the only module that runs systemctl;
- notify.py: sd_notify (READY, STATUS, WATCHDOG, RELOADING, ...), bounded in time;
- listenfds.py: sockets systemd passes (sd_listen_fds);
- signals.py: signal handlers that only set flags, for the keeper and the gateway.
"""
