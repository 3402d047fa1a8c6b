"""Search backends, each exposed to the agent as one LangChain tool.

- ``local``: BM25 ranking (rank-bm25) over the sections of the course docs and the bundled notes.
- ``duckduckgo``: langchain-community's DuckDuckGoSearchResults (the variant that returns links).

Both tools return ``(text for the model, list of sources)``; the sources travel as the ToolMessage
artifact so the API can list them without parsing text.
"""

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from rank_bm25 import BM25Okapi

from .settings import AgentSettings

logger = logging.getLogger(__name__)

LOCAL_TOOL_NAME = "search_docs"
WEB_TOOL_NAME = "web_search"
SNIPPET_CHARS = 320

# fmt: off
_STOPWORDS = {
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from",
    "how", "i", "in", "is", "it", "its", "of", "on", "or", "should", "so", "that", "the",
    "this", "to", "use", "using", "we", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
}
# fmt: on


def tokenize(text: str) -> list[str]:
    """Lower-case words without stopwords, with a plain plural 's' removed (builds -> build)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [
        w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w
        for w in words
        if w not in _STOPWORDS
    ]


def format_results(numbered: list[tuple[int, dict]]) -> str:
    """The text the model reads: one block per source, numbered as it should cite them."""
    if not numbered:
        return "No results."
    return "\n\n".join(f"[{n}] {s['title']} — {s['url']}\n{s['snippet']}" for n, s in numbered)


def as_sources(hits: list, link: str) -> list[dict]:
    """A search backend's hits as the sources an answer cites ({"title", "url", "snippet"}), the
    link read from the key `link`; a hit that is not a dict or has no link is left out."""
    return [
        {"title": h.get("title") or h[link], "url": h[link], "snippet": h.get("snippet", "")}
        for h in hits
        if isinstance(h, dict) and h.get(link)
    ]


def search_tool(search: Callable, name: str, description: str) -> BaseTool:
    """A search backend as the agent's tool. `search(query)`, a function or a coroutine function,
    returns the sources ({"title", "url", "snippet"}); the model reads them numbered
    (format_results), and the list travels as the ToolMessage's artifact."""

    def answer(sources: list[dict]) -> tuple[str, list[dict]]:
        return format_results(list(enumerate(sources, 1))), sources

    if inspect.iscoroutinefunction(search):

        async def run_async(query: str) -> tuple[str, list[dict]]:
            return answer(await search(query))

        how = {"coroutine": run_async}
    else:

        def run(query: str) -> tuple[str, list[dict]]:
            return answer(search(query))

        how = {"func": run}
    return StructuredTool.from_function(
        **how, name=name, description=description, response_format="content_and_artifact"
    )


@dataclass
class Section:
    title: str
    url: str
    text: str


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def _plain(markdown: str) -> str:
    """Markdown prose to plain text for snippets (code dropped, links and emphasis unwrapped)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", text, flags=re.M)
    text = re.sub(r"^\s*>\s?", "", text, flags=re.M)
    text = re.sub(r"\*\*|__|[`*|]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def split_sections(path: Path, root: Path) -> list[Section]:
    """One Section per heading (levels 1-3) of a markdown file."""
    rel = f"{root.name}/{path.relative_to(root).as_posix()}"
    doc_title, heading, lines, sections = path.stem.replace("-", " ").replace("_", " "), "", [], []
    in_code = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            title = f"{doc_title} / {heading}" if heading and heading != doc_title else doc_title
            sections.append(Section(title, f"{rel}#{_slug(heading)}" if heading else rel, body))

    # Index what a reader of the rendered page sees: HTML comments (such as the docs' include
    # markers) are invisible on the page, so they must not turn up in answers either.
    text = re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8", errors="replace"), flags=re.S)
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^(#{1,3})\s+(.*?)\s*#*$", line)
        if match:
            flush()
            lines = []
            heading = match.group(2).strip()
            if match.group(1) == "#" and not sections:
                doc_title = heading
        else:
            lines.append(line)
    flush()
    return sections


class LocalSearch:
    """BM25 over markdown sections. The index is built once, when the agent starts."""

    def __init__(self, dirs: list[Path]):
        self.sections = [
            s for root in dirs for p in sorted(root.rglob("*.md")) for s in split_sections(p, root)
        ]
        corpus = [tokenize(f"{s.title} {s.title} {s.text}") for s in self.sections]
        self._bm25 = BM25Okapi(corpus) if self.sections else None
        logger.info(
            "local search index built",
            extra={"sections": len(self.sections), "dirs": [str(d) for d in dirs]},
        )

    def search(self, query: str, k: int) -> list[dict]:
        terms = tokenize(query)
        if self._bm25 is None or not terms:
            return []
        scores = self._bm25.get_scores(terms)
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        return [
            {
                "title": self.sections[i].title,
                "url": self.sections[i].url,
                "snippet": self._snippet(self.sections[i], terms),
            }
            for i in ranked[:k]
            if scores[i] > 0
        ]

    @staticmethod
    def _snippet(section: Section, terms: list[str]) -> str:
        """The sentences sharing the most words with the query, in their original order."""
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", _plain(section.text)) if s]
        wanted = set(terms)
        best = sorted(
            range(len(sentences)), key=lambda i: -len(wanted & set(tokenize(sentences[i])))
        )
        picked, size = [], 0
        for i in best:
            if size + len(sentences[i]) > SNIPPET_CHARS and picked:
                break
            picked.append(i)
            size += len(sentences[i])
        snippet = " ".join(sentences[i] for i in sorted(picked))
        return (
            snippet
            if len(snippet) <= SNIPPET_CHARS
            else snippet[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
        )


def make_local_tool(settings: AgentSettings) -> BaseTool:
    index = LocalSearch(settings.docs_dirs)

    def search_docs(query: str) -> list[dict]:
        return index.search(query, settings.SEARCH_MAX_RESULTS)

    return search_tool(
        search_docs,
        LOCAL_TOOL_NAME,
        "Search the course documentation and notes about containers, Docker and deploying AI "
        "agents. Input: a search query. Returns numbered passages with their file paths.",
    )


def make_duckduckgo_tool(settings: AgentSettings) -> BaseTool:
    # Imported here so the local backend never pays for langchain-community's import time.
    from langchain_community.tools import DuckDuckGoSearchResults

    ddg = DuckDuckGoSearchResults(output_format="list", num_results=settings.SEARCH_MAX_RESULTS)

    async def web_search(query: str) -> list[dict]:
        # Called with a plain dict, a content_and_artifact tool returns only its content: a list of
        # {"title", "link", "snippet"} dicts. Errors (DDGSException, RatelimitException) propagate;
        # the agent's tool middleware turns them into an error message for the model.
        return as_sources(await ddg.ainvoke({"query": query}), "link")

    return search_tool(
        web_search,
        WEB_TOOL_NAME,
        "Search the web with DuckDuckGo. Input: a search query. "
        "Returns numbered results with links.",
    )


def make_search_tool(settings: AgentSettings) -> BaseTool:
    if settings.search_backend == "duckduckgo":
        return make_duckduckgo_tool(settings)
    return make_local_tool(settings)
