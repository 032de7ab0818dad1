"""AMQP topic-exchange matching, as RabbitMQ does it, for the in-process transport.

A routing key and a binding pattern are lists of words separated by `.`. In a
pattern, `*` matches exactly one word and `#` matches zero or more words; any
other word matches only itself. The empty string is a key of zero words, so
`#` matches it and `*` does not; `a.` is the two words `a` and ``""``.
"""

from __future__ import annotations

import functools

__all__ = ["topic_matches"]


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Return whether a topic binding `pattern` matches `routing_key`."""
    return _matches(_split_words(pattern), _split_words(routing_key))


@functools.lru_cache(maxsize=4096)
def _split_words(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


def _matches(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    # reachable[j] is True when the pattern words consumed so far can match
    # exactly the first j key words. One pass per pattern word.
    reachable = [True] + [False] * len(key)
    for word in pattern:
        if word == "#":
            # `#` extends every reachable prefix by any number of words.
            for j in range(1, len(key) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            for j in range(len(key), 0, -1):
                reachable[j] = reachable[j - 1] and (word == "*" or word == key[j - 1])
            reachable[0] = False
    return reachable[len(key)]
