"""An LLM as judge, only with a real model: openevals' create_llm_as_judge with its RAG
groundedness prompt, asked whether an answer stays within the sources its search returned.

openevals, because it takes the course's own LangChain chat model (ChatOpenAI, with the same
OPENAI_BASE_URL as the agent: Ollama or vLLM work as judges too) and is already here under
agentevals. A judge is a model: its verdict is reported, with its reasons, and never required.
"""


def make_judge(settings, model_name: str | None = None):
    """judge(run) -> (passed, why), grading with `model_name` (default: the agent's model)."""
    from langchain_openai import ChatOpenAI
    from openevals.llm import create_llm_as_judge
    from openevals.prompts import RAG_GROUNDEDNESS_PROMPT

    model = ChatOpenAI(
        model=model_name or settings.MODEL_NAME,
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL or None,
        temperature=0,
        timeout=settings.REQUEST_TIMEOUT_SECONDS,
    )
    grounded = create_llm_as_judge(
        prompt=RAG_GROUNDEDNESS_PROMPT, feedback_key="groundedness", judge=model
    )

    def judge(run) -> tuple[bool, str]:
        messages = run.messages
        context = "\n\n".join(m["content"] for m in messages if m["role"] == "tool")
        try:
            verdict = grounded(context=context, outputs=run.answer or "")
        except Exception as exc:  # the judge's own failure is reported, not the agent's
            return False, f"the judge failed: {type(exc).__name__}: {exc}"[:200]
        comment = " ".join(str(verdict.get("comment") or "").split())
        return bool(verdict["score"]), f"groundedness: {comment[:160]}"

    return judge
