"""The floor for `make bench-api`: lesson 01's request and response shapes, no agent behind them."""

import os

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI()


class AgentRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/invoke")
async def invoke(request: AgentRequest) -> dict:
    return {"response": request.query, "tokens_used": 0, "model": "none"}


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
