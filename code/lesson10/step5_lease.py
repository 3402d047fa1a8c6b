"""Lesson 10, step 5: replicas share the runs: each takes a run on under a lease, claimed with
SKIP LOCKED (make lesson-10 STEP=5 in one terminal, PORT=8001 make lesson-10 STEP=5 in another)."""

import os
import threading
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from lesson10 import step4_idempotent as step4  # step 4's agent, tables, routes and go_on

REPLICA = os.getenv("REPLICA_ID") or str(os.getpid())  # names this process in its leases
LEASE_SECONDS = 10
LEASES = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS lease_owner text,
                 ADD COLUMN IF NOT EXISTS lease_expires timestamptz;
"""
# Runs that need a worker, leased to this replica in one statement: a run whose lease is free,
# has expired (its holder died), or is this replica's from a run it has finished since. SKIP
# LOCKED: a row another replica is claiming at this moment is skipped, not waited for.
CLAIM = """
UPDATE runs SET lease_owner = %s, lease_expires = now() + %s * interval '1 second'
WHERE id IN (
    SELECT id FROM runs WHERE state = 'running'
    AND (lease_expires IS NULL OR lease_expires < now() OR (lease_owner = %s AND id <> ALL(%s)))
    FOR UPDATE SKIP LOCKED
) RETURNING id
"""
RENEW = "UPDATE runs SET lease_expires = now() + %s * interval '1 second' WHERE id = ANY(%s)"


def worker() -> None:
    """Step 4's worker, for the runs this replica holds: it renews their leases as it goes."""
    while True:
        working = list(step4.working)
        step4.sql(RENEW, LEASE_SECONDS, working)
        for run in step4.sql(CLAIM, REPLICA, LEASE_SECONDS, REPLICA, working):
            print(f"replica {REPLICA} takes run {run['id']} on", flush=True)
            step4.working.add(run["id"])
            threading.Thread(target=step4.go_on, args=(run["id"],), daemon=True).start()
        time.sleep(0.5)


@asynccontextmanager
async def lifespan(app: FastAPI):
    step4.pool.open(wait=True)
    step4.agent.checkpointer.setup()  # LangGraph's tables
    step4.sql(step4.TABLES + LEASES)  # step 4's, and the lease's two columns
    threading.Thread(target=worker, daemon=True).start()
    yield


app = FastAPI(title="Durable runs, step 5", lifespan=lifespan, routes=step4.router.routes)

if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
