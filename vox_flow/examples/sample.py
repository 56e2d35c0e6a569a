"""The sample workflow ``vox-flow dev`` runs: count words in documents, then total them.

split (one run per document) -> count_words (fan-out) -> total (fan-in)
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from vox_flow.app import app
from vox_flow.retry import RetryPolicy
from vox_flow.tasks import typed_task


class Document(BaseModel):
    name: str = Field(min_length=1)
    text: str


class WordCount(BaseModel):
    name: str
    words: int = Field(ge=0)


class WordCounts(BaseModel):
    counts: list[WordCount]


class Total(BaseModel):
    documents: int
    words: int


@typed_task(
    app, name="sample.count_words", retry=RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5)
)
def count_words(doc: Document) -> WordCount:
    """How many whitespace-separated words a document has."""
    return WordCount(name=doc.name, words=len(doc.text.split()))


@typed_task(app, name="sample.total")
def total(counts: WordCounts) -> Total:
    """Sum the counts of a fan-out."""
    return Total(documents=len(counts.counts), words=sum(c.words for c in counts.counts))


SAMPLE_DOCUMENTS = [
    Document(name="celery", text="Distributed task queue with a focus on real-time processing"),
    Document(name="redis", text="An in-memory data store used as a broker"),
    Document(name="vox_flow", text="Typed tasks, durable retries, dead letters and schedules"),
]
