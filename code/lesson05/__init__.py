"""Lesson 05's package. One module serves the steps of docs/05-parallel-variations.md:

    container.py      a variation as a container: image, command, limits, presets, start()

The others are its "Going further", one module per topic, which the production API composes:

    presets.py        what the variations change
    redis_access.py   who may do what in Redis: a user per worker, the relay, back-off
    guards.py         owner tokens and cookies, per-client caps, stream slots, Host, models
    store.py          the Redis layout, and the script that ends a variation exactly once
    docker_workers.py the containers: limits, labels, and how their endings are read
    recovery.py       what a restarted API finds, and adopts
    warm.py           warm workers: started ahead, each for one variation
    traces.py         a run as one trace, every variation's worker in it (lesson 09)

The production API (code/lesson05/variations_api.py) is where the steps arrive. Its lifespan()
composes the app: the Orchestrator gets guards.PerClientCaps, redis_access.WorkerUsers,
warm.WarmPool and recovery.Adoption as collaborators, and traces.trace_launches wraps its launches
in spans."""
