"""Fault injection for streamapp: a ProcessPost workload under random kills, pauses and restarts.

    python -m chaos --duration 300 --seed 7      (``make chaos DURATION=300 SEED=7``)

The driver starts everything it needs and stops it again: its own Apache
Kafka broker (ports from the OS, a temporary data dir), the downstream
social-media backend (journaled, so its records are complete), a recording
proxy in front of it, and 2-3 workers. While a paced producer feeds
"uN post S" events for K users, a plan drawn from a seeded RNG
(``faults.plan``) SIGKILLs and restarts workers, adds and removes them,
SIGKILLs and restarts the broker on the same data dir, and SIGSTOPs a worker
past its session timeout. When the plan is done and the system is quiet, the
checks (``checks.check``) compare what the backend recorded, what the topics
hold and what the proxy saw against the guarantees, print one summary line,
and exit non-zero (with the seed) on any violation.

    faults.py    the seeded fault plan (a pure function of the seed)
    cluster.py   the processes: broker, downstream backend, workers
    proxy.py     per-worker-incarnation recording proxy in front of the backend
    workload.py  the events and the paced producer
    checks.py    the invariants, from collected evidence only
    driver.py    runs one chaos run and reports
"""
