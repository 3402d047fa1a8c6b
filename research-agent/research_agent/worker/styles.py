"""Lesson 05: the offline model with an answer style and a temperature, one per variation.

The worker (research_agent/worker/worker.py) runs it. ``style`` (an AnswerStyle,
research_agent/worker/job.py) shapes the answer; ``temperature`` above 0 draws the sources in an
order seeded by the question and the temperature, so each setting gives another answer, and the same
one every time.
"""

import random
import re

from langchain_core.messages import ToolMessage

from ..offline_model import HEADER, OfflineResearchModel, found_sources, no_sources
from .job import AnswerStyle


class StyledOfflineModel(OfflineResearchModel):
    style: AnswerStyle = "bullets"
    temperature: float = 0.0

    def _answer(self, results: list[ToolMessage], question: str = "") -> str:
        found = found_sources(results)
        if not found:
            return no_sources(results)
        if self.temperature > 0:  # a string seed is hashed with SHA-512: the same in every process
            found = random.Random(f"{question}|{self.temperature}").sample(found, len(found))
        if self.style == "brief":
            n, _, snippet = found[0]
            first_sentence = re.split(r"(?<=[.!?])\s", snippet)[0]
            return HEADER + f"in short: {first_sentence} [{n}]"
        if self.style == "detailed":
            parts = [f"{title} [{n}]: {snippet}" for n, title, snippet in found]
            return HEADER + "here is every source in turn.\n\n" + "\n\n".join(parts)
        lines = [f"- {snippet} [{n}]" for n, _, snippet in found[: self.max_cited]]
        return HEADER + "here is what the top sources say.\n\n" + "\n".join(lines)
