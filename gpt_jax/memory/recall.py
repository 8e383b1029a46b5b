"""What a chat front end asks the memory before a user turn: the hits for the message (its
`context`, rendered between the retrieval tokens), and where "remember this" goes.

    recall = Recall(MemoryStore(workdir / "chats.sqlite"), conversation="cli")
    recall.remember("My locker number is 4821.")
    recall.hits("Which locker is mine?")   # ["My locker number is 4821."]
"""
from __future__ import annotations

import dataclasses

from gpt_jax.memory.store import MemoryStore


@dataclasses.dataclass
class Recall:
    store: MemoryStore
    owner: str = "local"
    conversation: str = "cli"
    k: int = 5
    min_score: float = 0.0

    def hits(self, text: str) -> list[str]:
        """The best k texts (the owner's documents, this conversation's memories) above the
        threshold, best first."""
        index = self.store.retriever(self.owner, self.conversation)
        return [h.text for h in index.search(text, self.k, self.min_score)]

    def remember(self, text: str) -> None:
        self.store.add_memory(self.owner, self.conversation, text)

    def forget(self) -> None:
        self.store.delete_scope(self.owner, self.conversation)
